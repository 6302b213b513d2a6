"""Step-size control: Hairer's automatic first step and two controllers, chosen by ``options['controller']``.

- ``integral`` (the default): torchdiffeq's rule, so that a drop-in call takes torchdiffeq's steps.
- ``pi``: a PI controller that lands on the last output; fewer evaluations on the neural ODEs measured in
  docs/benchmarks.md, which is why the training runner selects it.

A controller works on host floats: the solver fetches the error ratio of each attempted step from
the device once (that single sync decides accept/reject anyway), and the next step size follows from
it without touching the device again.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuralode.solvers.norms import Norm, Tolerance, error_scale


@dataclass
class StepController(ABC):
    """What both controllers share: ``h_new = h * factor(r)`` with ``r`` the error ratio (accept r <= 1), an
    accepted step's factor clamped to ``[accepted_floor, ifactor]``, a rejected step's to ``[dfactor, 1]``; a
    zero error grows the step by ``ifactor``, a non-finite one (overflowing dynamics) shrinks it by ``dfactor``;
    the result is kept within ``[min_step, max_step]``."""

    error_order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    min_step: float = 0.0
    max_step: float = math.inf

    @abstractmethod
    def factor(self, ratio: float) -> float:
        """The step's growth factor before clamping."""

    @abstractmethod
    def accepted_floor(self) -> float:
        """The smallest factor of an accepted step."""

    def record(self, ratio: float) -> None:
        """Called with each accepted step's (finite) error ratio."""

    def next_step(self, h: float, ratio: float, accepted: bool) -> float:
        if not math.isfinite(ratio):
            factor = self.dfactor
        elif ratio == 0.0:
            factor = self.ifactor
        else:
            factor = self.factor(ratio)
            factor = (min(self.ifactor, max(self.accepted_floor(), factor)) if accepted
                      else min(1.0, max(self.dfactor, factor)))
        if accepted and math.isfinite(ratio):
            self.record(ratio)
        return min(self.max_step, max(self.min_step, h * factor))


@dataclass
class IntegralController(StepController):
    """torchdiffeq's rule: ``factor = safety * r**(-1/k)`` with ``k`` the order of the local error estimate,
    and an accepted step never shrinks. Steps run past the last output, which comes from the dense output,
    as in torchdiffeq."""

    lands_on_last_output = False

    def factor(self, ratio: float) -> float:
        return self.safety * ratio ** (-1.0 / self.error_order)

    def accepted_floor(self) -> float:
        return 1.0


@dataclass
class PIController(StepController):
    """``factor = safety * r**-alpha * r_prev**beta``, ``r_prev`` the last accepted step's error ratio.

    For an error estimate of local order ``k``: ``beta = 0.2 / k`` (Hairer's damping) and
    ``alpha = 1 / k + beta`` (0.24 and 0.04 for dopri5). The ``r_prev`` term damps the step-size
    oscillation of a pure integral controller. ``alpha - beta = 1 / k`` puts the steady state at the same
    error ratio as the integral controller ``safety * r**(-1/k)`` (``r = safety**k``, 0.59 for dopri5)
    rather than Hairer's ``alpha = 1/k - 0.75 beta`` (``r`` = 0.45), which spent ~25% more steps than
    torchdiffeq for errors well below tolerance (docs/benchmarks.md). An accepted step may shrink (down to
    ``dfactor``). The solve lands on the last output time (two equal steps rather than a step and a sliver)
    instead of stepping past it.
    """

    lands_on_last_output = True

    def __post_init__(self) -> None:
        self.beta = 0.2 / self.error_order
        self.alpha = 1.0 / self.error_order + self.beta
        self.prev_ratio = 1.0

    def factor(self, ratio: float) -> float:
        return self.safety * ratio ** -self.alpha * self.prev_ratio ** self.beta

    def accepted_floor(self) -> float:
        return self.dfactor

    def record(self, ratio: float) -> None:
        # Floor so that one exactly-resolved step does not make the next one explode.
        self.prev_ratio = max(ratio, 1e-4)


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


CONTROLLERS: dict[str, type[StepController]] = {"integral": IntegralController, "pi": PIController}


def make_controller(options: Mapping[str, Any], error_order: int) -> StepController:
    """The controller ``options['controller']`` names (default ``integral``; odeint's option check has vetted
    the name) with the options' safety, ifactor, dfactor, min_step and max_step."""
    kind = CONTROLLERS[options.get("controller", "integral")]
    return kind(error_order, float(options.get("safety", 0.9)), float(options.get("ifactor", 10.0)),
                float(options.get("dfactor", 0.2)), float(options.get("min_step", 0.0)),
                float(options.get("max_step", math.inf)))
