"""Types and small helpers every solver family shares: the flat dynamics, work counters, the user's step
hooks, the step budget, torchdiffeq's ``perturb`` nudge, cubic Hermite interpolation and warnings that point at
the caller."""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuralode.solvers.errors import MaxNumStepsError

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Counter:
    """Host-side work counters of one solve (counting calls costs no device sync)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    # The step size the controller proposed last (adaptive solves; a per-sample solve's: one per sample): a good
    # first step for a solve that continues from here, e.g. the adjoint's next backward interval, instead of a
    # fresh estimate.
    next_step: float | torch.Tensor | None = None


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


class StepBudget:
    """The caps on attempted steps (accepted or rejected), counted on the host: ``options['max_num_steps']`` per
    output interval (torchdiffeq's meaning: the count restarts once a step passes an output time) and
    ``options['max_steps_per_solve']`` over the whole solve (the training runner's cap). Neither is set by default.
    ``where()`` describes the solve's progress for the message."""

    def __init__(self, options: Mapping[str, Any], where: Callable[[], str]) -> None:
        self.per_interval = options.get("max_num_steps") or math.inf
        self.per_solve = options.get("max_steps_per_solve") or math.inf
        self.where = where
        self.interval = self.total = 0

    def spend(self) -> None:
        self.interval += 1
        self.total += 1
        if self.interval > self.per_interval:
            self._refuse("max_num_steps", self.per_interval, "steps within one output interval")
        if self.total > self.per_solve:
            self._refuse("max_steps_per_solve", self.per_solve, "steps in one solve")

    def output_reached(self) -> None:
        self.interval = 0

    def _refuse(self, option: str, cap: int, what: str) -> None:
        raise MaxNumStepsError(f"{option}={cap} exceeded ({what}): {self.where()}; loosen rtol/atol, raise "
                               f"options[{option!r}], or use a fixed-step method (e.g. method='rk4', "
                               "options=dict(step_size=...))", option=option)


# Frames of these packages lie between a solver's warning and the user's call (torch's: the adjoint's autograd).
_INTERNAL_DIRS = tuple(str(Path(module.__file__).parent) for module in (sys.modules[__name__], torch))


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the location of the first caller outside the solvers (and torch), however deep the solver's
    call chain: the line of the user's ``odeint`` call, or of the code that called it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
