"""Step-size control: Hairer's automatic first step and a PI controller.

The controller works on host floats: the solver fetches the error ratio of each attempted step from
the device once (that single sync decides accept/reject anyway), and the next step size follows from
it without touching the device again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neuralode.solvers.norms import Norm, Tolerance, error_scale


@dataclass
class PIController:
    """``h_new = h * clamp(safety * r**-alpha * r_prev**beta)`` with ``r`` the error ratio (accept r <= 1).

    For an error estimate of local order ``k``: ``beta = 0.2 / k`` (Hairer's damping) and
    ``alpha = 1 / k + beta`` (0.24 and 0.04 for dopri5). The ``r_prev`` term damps the step-size
    oscillation of a pure integral controller. ``alpha - beta = 1 / k`` puts the steady state at the same
    error ratio as the integral controller ``safety * r**(-1/k)`` (``r = safety**k``, 0.59 for dopri5)
    rather than Hairer's ``alpha = 1/k - 0.75 beta`` (``r`` = 0.45), which spent ~25% more steps than
    torchdiffeq for errors well below tolerance (docs/benchmarks.md): with these coefficients the ODE-Net
    at tol 1e-3 takes torchdiffeq's step count with a smaller error. Accepted steps change by a factor
    in ``[dfactor, ifactor]``; rejected steps never grow; a non-finite error (overflowing dynamics)
    shrinks by ``dfactor``.
    """

    error_order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    min_step: float = 0.0
    max_step: float = math.inf

    def __post_init__(self) -> None:
        self.beta = 0.2 / self.error_order
        self.alpha = 1.0 / self.error_order + self.beta
        self.prev_ratio = 1.0

    def next_step(self, h: float, ratio: float, accepted: bool) -> float:
        if not math.isfinite(ratio):
            factor = self.dfactor
        elif ratio == 0.0:
            factor = self.ifactor
        else:
            factor = self.safety * ratio ** -self.alpha * self.prev_ratio ** self.beta
            factor = min(self.ifactor, max(self.dfactor, factor)) if accepted else min(1.0, max(self.dfactor, factor))
        if accepted and math.isfinite(ratio):
            # Floor so that one exactly-resolved step does not make the next one explode.
            self.prev_ratio = max(ratio, 1e-4)
        return min(self.max_step, max(self.min_step, h * factor))


def initial_step(f, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, error_order: int,
                 rtol: Tolerance, atol: Tolerance, norm: Norm) -> torch.Tensor:
    """Hairer, Norsett & Wanner (1993), II.4: starting step size from one extra evaluation of ``f``.

    Computed on the device; the caller fetches it together with nothing else (one sync per solve). ``rtol`` and
    ``atol`` are numbers or flat ``(N,)`` per-element tensors like ``y0``.
    """
    scale = error_scale(norm, y0, y0, rtol, atol)
    d0 = norm(y0 / scale)
    d1 = norm(f0 / scale)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(torch.finfo(d1.dtype).tiny))
    y1 = y0 + h0 * f0
    f1 = f(t0 + h0, y1)
    d2 = norm((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                     (0.01 / dmax.clamp_min(torch.finfo(dmax.dtype).tiny)) ** (1.0 / error_order))
    return torch.minimum(100 * h0, h1)
