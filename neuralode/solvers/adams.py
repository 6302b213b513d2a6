"""Fixed-grid Adams multistep methods: Adams-Bashforth (``explicit_adams``) and Adams-Bashforth-Moulton
(``implicit_adams``, alias ``fixed_adams``), with torchdiffeq 0.2.5's variable-order start-up.

Each grid step first evaluates ``f`` at its start and pushes that slope onto a history (newest first, at
most ``max_order - 1`` slopes). While the history holds fewer than 3 slopes the step is an RK4 (3/8 rule)
step; after that it is the Adams-Bashforth step of as many steps as the history holds (order 3 up to
``max_order - 1``). ``implicit_adams`` then corrects that prediction with the Adams-Moulton formula one
order higher, by functional iteration (at most ``max_iters`` evaluations at the step's end, stopped once
two iterates agree within rtol/atol in the max norm). A step whose iteration does not converge keeps its
last iterate, warns, and drops the oldest slope of the history, as torchdiffeq does.

The coefficients are the constant-step ones (also on a non-uniform grid ``t``, as in torchdiffeq), computed
exactly from the generating series of the backward-difference forms.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import torch

from neuralode.solvers.common import Dynamics, nudged, warn_caller
from neuralode.solvers.grid import GRID_OPTIONS, FixedGridMethod, Grid, GridStepper
from neuralode.solvers.problem import Problem
from neuralode.solvers.rk import stage_derivatives
from neuralode.solvers.tableaus import TABLEAUS

MIN_ORDER = 4  # below this max_order the method never leaves its RK4 start-up
MAX_ORDER = 12
DEFAULT_MAX_ITERS = 4
_STARTUP_SLOPES = MIN_ORDER - 1  # slopes the history needs before Adams steps replace RK4


@functools.cache
def _gammas(count: int, implicit: bool) -> tuple[Fraction, ...]:
    """Backward-difference weights: ``sum_m gamma_m x^m = -x / ((1 - x) log(1 - x))`` (Bashforth) or
    ``-x / log(1 - x)`` (Moulton), from the recurrence ``sum_{j<=m} gamma_j / (m + 1 - j) = [m == 0 or
    Bashforth]``."""
    gammas: list[Fraction] = []
    for m in range(count):
        target = Fraction(1 if (m == 0 or not implicit) else 0)
        gammas.append(target - sum((g / (m + 1 - j) for j, g in enumerate(gammas)), Fraction(0)))
    return tuple(gammas)


@functools.cache
def adams_coefficients(steps: int, implicit: bool) -> tuple[Fraction, ...]:
    """Weights ``beta_i`` of the ``steps``-term Adams formula ``y1 = y0 + h sum_i beta_i f_i``.

    Bashforth: ``f_i = f(t0 - i h)``, ``i < steps`` (order ``steps``). Moulton: ``f_i = f(t1 - i h)``, so
    ``beta_0`` weighs the slope at the step's end (order ``steps``). Expanding the backward differences
    ``nabla^j f = sum_i (-1)^i C(j, i) f_i`` gives ``beta_i = (-1)^i sum_{j>=i} gamma_j C(j, i)``.
    """
    gammas = _gammas(steps, implicit)
    return tuple((-1) ** i * sum((gammas[j] * math.comb(j, i) for j in range(i, steps)), Fraction(0))
                 for i in range(steps))


@functools.cache
def _coefficient_tensors(dtype: torch.dtype, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(bashforth, moulton)``: entry ``k`` holds the ``k``-term weights (entry 0 unused)."""
    mk = lambda k, implicit: torch.tensor([float(b) for b in adams_coefficients(k, implicit)],  # noqa: E731
                                          dtype=dtype, device=device)
    return ([mk(k, False) for k in range(MAX_ORDER + 1)], [mk(k, True) for k in range(MAX_ORDER + 1)])


def _is_integer(value: Any) -> bool:
    """An int, or a float holding one (torchdiffeq takes ``max_order=6.0``); not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and int(value) == value


class Adams(FixedGridMethod):
    """``explicit_adams`` (``implicit=False``) or ``implicit_adams`` on a fixed grid; the grid options
    (``step_size``, ``grid_constructor``, ``interp``, ``perturb``) mean what they mean for the fixed-step
    Runge-Kutta methods."""

    def __init__(self, name: str, implicit: bool) -> None:
        self.name = name
        self.implicit = implicit
        self.valid_options = GRID_OPTIONS + ("max_order",) + (("max_iters",) if implicit else ())

    def check_options(self, options: Mapping[str, Any]) -> tuple[int, int]:
        """``(max_order, max_iters)`` from ``options``, checked."""
        max_order = options.get("max_order", MAX_ORDER)
        if not _is_integer(max_order) or not 1 <= max_order <= MAX_ORDER:
            raise ValueError(f"options['max_order'] of method {self.name!r} must be an integer in [1, {MAX_ORDER}], "
                             f"got {max_order!r}")
        if max_order < MIN_ORDER:
            warn_caller(f"options['max_order']={max_order} is below {MIN_ORDER}: method {self.name!r} takes only "
                        "RK4 steps")
        max_iters = options.get("max_iters", DEFAULT_MAX_ITERS)
        if not _is_integer(max_iters) or max_iters < 1:
            raise ValueError(f"options['max_iters'] of method {self.name!r} must be a positive integer, got "
                             f"{max_iters!r}")
        return int(max_order), int(max_iters)

    def stepper(self, prob: Problem, f: Dynamics, y0: torch.Tensor, grid: Grid) -> GridStepper:
        if self.implicit and prob.t_host is None:
            raise ValueError(f"method {self.name!r} reads its corrector's convergence on the host, so it cannot run "
                             "inside CUDA-graph capture; use explicit_adams there")
        return _AdamsStepper(self, f, y0, prob, grid)


class _AdamsStepper(GridStepper):
    """One solve's Adams steps: the slope history (newest first) and the coefficients on the state's device."""

    def __init__(self, method: Adams, f: Dynamics, y0: torch.Tensor, prob: Problem, grid: Grid) -> None:
        self.max_order, self.max_iters = method.check_options(prob.options)
        self.name, self.implicit, self.f, self.rtol, self.atol = method.name, method.implicit, f, prob.rtol, prob.atol
        self.times = grid.times
        self.bashforth, self.moulton = _coefficient_tensors(y0.dtype, str(y0.device))
        self.rk4 = TABLEAUS["rk4"].tensors(y0.dtype, y0.device)
        # torchdiffeq's perturb: slopes at a step's start are taken just after it, those at its end just before.
        perturb, direction = bool(prob.options.get("perturb", False)), grid.direction
        self.at_start = (lambda s: nudged(s, direction)) if perturb else (lambda s: s)
        self.at_end = (lambda s: nudged(s, -direction)) if perturb else (lambda s: s)
        self.history: list[torch.Tensor] = []

    def __call__(self, k: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state at ``times[k + 1]`` from ``y`` at ``times[k]``, and the slope ``f(times[k], y)``."""
        t0, t1 = self.times[k], self.times[k + 1]
        dt = t1 - t0
        f0 = self.f(self.at_start(t0), y)
        self.history = ([f0] + self.history)[:max(self.max_order - 1, 1)]
        order = min(len(self.history), self.max_order - 1)
        if order < _STARTUP_SLOPES:
            stage_t = t0 + dt * self.rk4["c"]
            stage_t[-1] = self.at_end(t1)
            return y + dt * (self.rk4["b"] @ stage_derivatives(self.rk4["a_rows"], self.f, stage_t, y, dt, f0)), f0
        past = torch.stack(self.history[:order])
        dy = dt * (self.bashforth[order] @ past)
        if self.implicit:
            moulton = self.moulton[order + 1]
            dy, converged = self._correct(self.at_end(t1), y, dy, dt * (moulton[1:] @ past), dt * moulton[0])
            if not converged:
                warn_caller(f"method {self.name!r}: the corrector did not converge in max_iters={self.max_iters} "
                            "iterations; the result may be inaccurate (raise options['max_iters'] or take smaller "
                            "steps)")
                self.history.pop()
        return y + dy, f0

    def _correct(self, t1: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, known: torch.Tensor,
                 weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Adams-Moulton by functional iteration ``dy <- weight f(t1, y + dy) + known`` from the predicted
        ``dy``; converged once two iterates differ by less than ``atol + rtol |dy|`` everywhere."""
        converged = False
        for _ in range(self.max_iters):
            new = weight * self.f(t1, y + dy) + known
            with torch.no_grad():
                scale = torch.maximum(dy.abs(), new.abs()).mul_(self.rtol).add_(self.atol)
                converged = bool(((new - dy).abs() / scale).max() < 1)
            dy = new
            if converged:
                break
        return dy, converged
