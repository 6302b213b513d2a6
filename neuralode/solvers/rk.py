"""One explicit Runge-Kutta stepper driven by a Butcher tableau, in the fixed-grid loop (:mod:`.grid`) and the
adaptive loop (:mod:`.adaptive`).

Both work on a flat state vector ``y`` of shape ``(N,)`` and a dynamics ``f(t, y) -> (N,)`` (the public API
flattens tensors and tuples into that form). The stage derivatives of a step live in one ``(stages, N)``
buffer and every linear combination of them is a single matrix-vector product.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from neuralode.solvers import compiled
from neuralode.solvers.adaptive import AdaptiveStepper, EmbeddedStepper, solve_adaptive
from neuralode.solvers.common import Counter, Dynamics, StepCallbacks, nudged
from neuralode.solvers.events import EventWatch
from neuralode.solvers.grid import FixedGridMethod, Grid, GridStepper, stage_times
from neuralode.solvers.norms import Norm, Tolerance, error_scale
from neuralode.solvers.problem import Method, Problem
from neuralode.solvers.tableaus import ButcherTableau


def combine(weights: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``weights`` (``(r,)`` or ``(q, r)``) applied along the first axis of ``k`` (``(r, *state)``) in one product;
    a per-sample solve's state is ``(B, M)`` rather than flat."""
    return (weights @ k.flatten(1)).view(weights.shape[:-1] + k.shape[1:])


def stage_derivatives(a_rows: list[torch.Tensor], f: Dynamics, stage_t, y: torch.Tensor, h: float | torch.Tensor,
                      f0: torch.Tensor) -> torch.Tensor:
    """Stage derivatives ``K`` of one step, shape ``(stages, *y.shape)``; ``K[0] = f0 = f(stage_t[0], y)``. ``h``: a
    number, or a tensor broadcasting against ``y`` (a per-sample solve's ``(B, 1)`` steps)."""
    k = y.new_empty((len(a_rows) + 1,) + y.shape)
    k[0] = f0
    for i, row in enumerate(a_rows, start=1):
        # One fused y + h * (K[:i]^T a_i) when h is a host number; a device h needs a separate multiply.
        yi = torch.addmv(y, k[:i].T, row, alpha=h) if isinstance(h, float) else y + h * combine(row, k[:i])
        k[i] = f(stage_t[i], yi)
    return k


class FixedGridRK(FixedGridMethod):
    """Fixed steps on the grid ``t``, on a uniform grid from ``t[0]`` to ``t[-1]`` (``options=dict(step_size=h)``,
    the last step shortened) or on ``options['grid_constructor'](f, y0, t)``; outputs off the grid come from
    linear (``interp='linear'``, default) or cubic Hermite (``interp='cubic'``) interpolation, as in torchdiffeq.
    ``perturb=True`` evaluates each step's first stage just after its start time and stages at its end time
    just before it, so a discontinuity of ``f`` on a grid point is seen from the side the step lies on."""

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def stepper(self, prob: Problem, f: Dynamics, y0: torch.Tensor, grid: Grid) -> GridStepper:
        return _FixedRKStepper(self.tableau, f, y0, grid, bool(prob.options.get("perturb", False)))


class _FixedRKStepper(GridStepper):
    """The steps of an explicit tableau over a grid. All stage times are computed at once: a step only indexes
    device tensors and never reads them, so the loop can be captured in a CUDA graph."""

    def __init__(self, tableau: ButcherTableau, f: Dynamics, y0: torch.Tensor, grid: Grid, perturb: bool) -> None:
        co = tableau.tensors(y0.dtype, y0.device)
        self.f, self.a_rows, self.b, self.dts = f, co["a_rows"], co["b"], grid.dts
        self.stage_t = stage_times(co["c"], tableau.c, grid.times[:-1], grid.times[1:], perturb, grid.direction)

    def __call__(self, k: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.f(self.stage_t[k, 0], y)  # f at a grid point: a cubic output's slope there
        return y + self.dts[k] * (self.b @ stage_derivatives(self.a_rows, self.f, self.stage_t[k], y, self.dts[k], f0)), f0


class RKStep(NamedTuple):
    """One attempted step of an embedded pair: ``y_err`` holds its error estimate(s) ``(1 or 2, N)``, already times
    the step and without autograd; ``y0``, ``f0``, ``k`` (the stage derivatives) and ``h`` (the step in the
    state's dtype) are its dense output's."""

    y1: torch.Tensor
    y_err: torch.Tensor
    f1: torch.Tensor | None
    y0: torch.Tensor
    f0: torch.Tensor
    k: torch.Tensor
    h: float | torch.Tensor


class ExplicitRKStepper(EmbeddedStepper):
    """One step of an embedded explicit pair; time may be held in a wider dtype than the state (``time_dtype``)."""

    step_type = RKStep  # what a compiled step (solvers.compiled) builds to use this stepper's dense output

    def __init__(self, tableau: ButcherTableau, dtype: torch.dtype, device: torch.device,
                 time_dtype: torch.dtype) -> None:
        co = tableau.tensors(dtype, device)
        self.tableau, self.error_order = tableau, tableau.error_order
        self.a_rows, self.b_and_error, self.dense = co["a_rows"], co["b_and_error"], co.get("dense")
        self.c_time = co["c"].to(time_dtype)  # stage times in time's dtype
        self.wide_time = time_dtype != dtype
        self.last_stage_is_f1 = tableau.fsal or tableau.reuse_last_stage

    def step(self, f: Dynamics, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, dt: float | torch.Tensor,
             jump_at: torch.Tensor | None = None) -> RKStep:
        # All stage times in one kernel (not one per stage): on a GPU the launches add up. A per-sample solve's
        # t0 and dt are (B, 1): its stage times are (stages, B, 1).
        stage_t = t0 + self.c_time.view((-1,) + (1,) * t0.ndim) * dt
        if jump_at is not None:  # stages at the step's end see f just before the discontinuity
            stage_t = torch.where(self.c_time == 1, nudged(jump_at, -1.0), stage_t)
        h = dt.to(y0.dtype) if torch.is_tensor(dt) else dt
        k = stage_derivatives(self.a_rows, f, stage_t, y0, h, f0)
        comb = combine(self.b_and_error, k)  # (2 or 3, N): solution and error combinations in one product
        y1 = y0 + h * comb[0]
        with torch.no_grad():
            y_err = comb[1:].mul(h)
        return RKStep(y1, y_err, k[-1] if self.last_stage_is_f1 else None, y0, f0, k, h)

    def error_ratio(self, y0: torch.Tensor, step: RKStep, rtol: Tolerance, atol: Tolerance,
                    norm: Norm) -> torch.Tensor:
        scaled = step.y_err.div_(error_scale(norm, y0, step.y1, rtol, atol))  # rtol/atol: numbers or (N,) tensors
        err = norm(scaled[0])
        if scaled.shape[0] == 2:  # DOP853: e^2 / sqrt(e^2 + 0.01 e3^2)
            err3 = norm(scaled[1])
            err = err * err / torch.sqrt(err * err + 0.01 * err3 * err3).clamp_min(torch.finfo(err.dtype).tiny)
        return err

    def interpolate(self, step: RKStep, f1: torch.Tensor, t_out: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        if self.wide_time:  # relative to the step's start, in the state's dtype
            t_out, t0 = (t_out - t0).to(step.y0.dtype), 0.0
        theta = (t_out - t0) / step.h
        if self.tableau.interpolation == "polynomial":
            k = step.k  # dense: (stages [+ 1], degree): b_i(theta) = sum_j dense[i, j] theta^(j + 1)
            powers = torch.stack([theta ** (j + 1) for j in range(self.dense.shape[1])])  # (degree, m)
            if self.dense.shape[0] > k.shape[0]:  # the extension also weighs f(t + h, y_new)
                k = torch.cat([k, f1[None]])
            return step.y0 + step.h * (self.dense @ powers).T @ k
        # Cubic Hermite through (y0, f0) and (y1, f1).
        t2, t3 = theta * theta, theta * theta * theta
        coef = torch.stack([3 * t2 - 2 * t3, (t3 - 2 * t2 + theta) * step.h, (t3 - t2) * step.h], dim=1)  # (m, 3)
        return step.y0 + coef @ torch.stack([step.y1 - step.y0, step.f0, f1])


class AdaptiveRK(Method):
    """Embedded RK pair with adaptive steps (``options["controller"]``) and dense output at the requested times.

    ``t`` must be increasing here (a decreasing ``t`` reaches the method as ``s = -t``).
    """

    adaptive = True
    increasing_time_only = True
    can_overshoot = True
    supports_events = True
    default_time_dtype = torch.float64  # as torchdiffeq's; options['dtype']=torch.float32 keeps the state's
    valid_options = ("first_step", "safety", "ifactor", "dfactor", "min_step", "max_step", "max_num_steps",
                     "max_steps_per_solve", "norm", "step_t", "jump_t", "dtype", "controller", "compile")
    valid_callbacks = frozenset({"callback_step", "callback_accept_step", "callback_reject_step"})

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def solve(self, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter, *,
              callbacks: StepCallbacks | None = None, event: EventWatch | None = None,
              land: bool = False) -> torch.Tensor:
        stepper: AdaptiveStepper = ExplicitRKStepper(self.tableau, y0.dtype, y0.device, prob.t.dtype)
        if prob.options.get("compile") and compiled.takes(self.name, prob.options):
            stepper = compiled.CompiledRKStepper(stepper, counter)
        return solve_adaptive(stepper, prob, f, y0, counter, callbacks=callbacks, event=event, land=land)
