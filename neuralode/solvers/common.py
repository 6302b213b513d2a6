"""Types and small helpers every solver family shares: the flat dynamics, work counters, the user's step
hooks, the solver errors, torchdiffeq's ``perturb`` nudge and cubic Hermite interpolation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MaxNumStepsError(RuntimeError):
    """The adaptive solver needed more than ``max_num_steps`` steps."""


class NonFiniteError(FloatingPointError):
    """The dynamics produced inf/nan that shrinking the step did not cure."""


@dataclass
class Counter:
    """Host-side work counters of one solve (counting calls costs no device sync)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    # The step size the controller proposed last (adaptive solves): a good first step for a solve that
    # continues from here, e.g. the adjoint's next backward interval, instead of a fresh estimate.
    next_step: float | None = None


StepCallback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class StepCallbacks:
    """The user's hooks around each attempted step, called as ``hook(t0, y0, dt)`` with ``y0`` the flat state
    and ``dt`` the step attempted (positive in the solver's time); the caller wraps them to restore the
    user's state structure and time direction."""

    step: StepCallback | None = None
    accept: StepCallback | None = None
    reject: StepCallback | None = None

    def reversed(self) -> "StepCallbacks":
        """For a solve on ``s = -t``: the hooks see the caller's time ``t0 = -s0``."""
        flip = lambda hook: None if hook is None else (lambda s0, y, dt: hook(-s0, y, dt))  # noqa: E731
        return StepCallbacks(flip(self.step), flip(self.accept), flip(self.reject))


def nudged(t: torch.Tensor, direction: float | torch.Tensor) -> torch.Tensor:
    """``t`` moved by one ulp towards ``direction`` (torchdiffeq's ``perturb``: which side of a discontinuity
    ``f`` is evaluated on), still carrying ``t``'s gradient."""
    return t + (torch.nextafter(t.detach(), t.detach() + direction) - t.detach())


def hermite(theta: torch.Tensor, h: float | torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor,
             f1: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite through ``(y0, f0)`` and ``(y1, f1)`` at ``theta`` (``(m,)``) of a step ``h``: ``(m, N)``."""
    theta = theta.unsqueeze(-1)
    t2, t3 = theta * theta, theta * theta * theta
    return y0 + (3 * t2 - 2 * t3) * (y1 - y0) + h * ((t3 - 2 * t2 + theta) * f0 + (t3 - t2) * f1)
