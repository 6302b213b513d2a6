"""What the fixed-grid methods (explicit RK, implicit RK, Adams) share: the step grid, stage times with
torchdiffeq's ``perturb``, outputs between grid points, and the fixed-step search for an event.
A method supplies only its step."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from neuralode.solvers.common import Counter, Dynamics, MaxNumStepsError, StepCallbacks, hermite, nudged
from neuralode.solvers.norms import Tolerance

# One fixed step from (t0, y) to t1: the new state and f(t0, y) (the slope cubic outputs use), or None for a
# method that does not evaluate it (it is then evaluated only where a cubic output needs it).
FixedStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

# Step ``k`` of a grid from the state ``y`` at ``grid[k]``: the state at ``grid[k + 1]`` and ``f(grid[k], y)``, or None
# for a method that does not evaluate it.
GridStep = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

# torchdiffeq's cap on the steps a fixed-step solve may take looking for an event.
MAX_FIXED_EVENT_STEPS = 20000
# The most steps a step_size grid may have: its host copy alone takes ~32 bytes a step (320 MB here), and the
# solve hours; a smaller step_size over a long span is refused before anything is built.
MAX_GRID_STEPS = 10_000_000


def step_grid(f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None,
              options: Mapping[str, Any]) -> tuple[torch.Tensor, list[float] | None]:
    """The step grid and its host copy (``None`` when the grid is ``t`` itself: no interpolation): ``t``, a
    uniform grid of ``options['step_size']`` (the last step shortened) or ``options['grid_constructor'](f, y0, t)``."""
    step_size = options.get("step_size")
    constructor = options.get("grid_constructor")
    if step_size is None and constructor is None:
        return t, None
    if t_host is None:
        raise ValueError("options['step_size'] and options['grid_constructor'] need the output times on the "
                         "host; they cannot be used while capturing a CUDA graph (step on the grid t instead)")
    if constructor is None:
        span = t_host[-1] - t_host[0]
        n = max(1, math.ceil(abs(span) / step_size))
        if n > MAX_GRID_STEPS:
            raise ValueError(f"options['step_size']={step_size:.3g} over [{t_host[0]:.6g}, {t_host[-1]:.6g}] makes "
                             f"{n:.3g} steps, more than the {MAX_GRID_STEPS:,} a fixed-grid solve takes; raise "
                             "step_size or use an adaptive method")
        sign = 1.0 if span >= 0 else -1.0
        grid_host = [t_host[0] + sign * step_size * k for k in range(n)] + [t_host[-1]]
        steps = torch.arange(n, dtype=y0.dtype, device=y0.device) * (sign * step_size)
        return torch.cat([t[:1] + steps, t[-1:]]), grid_host
    grid = constructor(f, y0, t)
    if not torch.is_tensor(grid) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least 2 times, got "
                         f"{tuple(grid.shape) if torch.is_tensor(grid) else type(grid).__name__}")
    grid = grid.to(dtype=t.dtype, device=t.device)
    grid_host = grid.detach().cpu().tolist()
    up = t_host[-1] > t_host[0]
    if (grid_host[0] != t_host[0] or grid_host[-1] != t_host[-1]
            or any((b > a) != up or a == b for a, b in zip(grid_host, grid_host[1:]))):
        raise ValueError(f"options['grid_constructor'] must return a grid from t[0]={t_host[0]:.6g} to "
                         f"t[-1]={t_host[-1]:.6g}, strictly monotone the same way as t; got {grid_host[:3]}..."
                         f"{grid_host[-1:]}")
    return grid, grid_host


def march(step: GridStep, grid: torch.Tensor, y0: torch.Tensor, direction: float | torch.Tensor,
          callbacks: StepCallbacks | None, counter: Counter, keep_slopes: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The one fixed-grid loop of every fixed-step family: ``step`` over each interval of ``grid``, the user's step
    hook before each. Returns the states on the grid, ``(len(grid), N)``, and (``keep_slopes``: for cubic outputs)
    the slopes the steps gave. Reads nothing from the device."""
    on_step = callbacks.step if callbacks is not None else None
    dts = grid[1:] - grid[:-1]
    states, slopes, y = [y0], [], y0
    for k in range(dts.shape[0]):
        if on_step is not None:
            on_step(grid[k], y, dts[k] * direction)
        y, slope = step(k, y)
        states.append(y)
        if keep_slopes and slope is not None:
            slopes.append(slope)
    counter.accepted += dts.shape[0]
    return torch.stack(states), slopes


def stage_times(c: torch.Tensor, c_host: Sequence[float], starts: torch.Tensor, ends: torch.Tensor, perturb: bool,
                direction: float | torch.Tensor) -> torch.Tensor:
    """Stage times ``(steps, stages)`` of the steps ``[starts[k], ends[k]]``, all in one go. ``perturb``: a
    step's first stage is evaluated just after its start and stages at its end just before it, so a
    discontinuity of ``f`` on a grid point is seen from the side the step lies on."""
    times = starts[:, None] + (ends - starts)[:, None] * c
    if perturb:
        times[:, 0] = nudged(starts, direction)
        for i, ci in enumerate(c_host):
            if ci == 1.0:
                times[:, i] = nudged(ends, -direction)
    return times


def grid_outputs(f: Dynamics, t: torch.Tensor, t_host: list[float] | None, grid: torch.Tensor,
                 grid_host: list[float] | None, ys: torch.Tensor, slopes: list[torch.Tensor] | None,
                 interp: str) -> torch.Tensor:
    """The states at ``t`` from the states ``ys`` on the grid: ``ys`` itself when the grid is ``t``, else linear
    or cubic Hermite (``interp='cubic'``) interpolation. ``slopes``: ``f`` at the grid points the method already
    has (at least all but the last); missing ones cost an evaluation each."""
    if grid_host is None:
        return ys
    dts = grid[1:] - grid[:-1]
    last = len(grid_host) - 2
    # Interval indices found on the host, once per solve.
    idx = torch.tensor([min(last, max(0, bracket(grid_host, tj))) for tj in t_host], device=ys.device)
    theta = (t - grid[idx]) / dts[idx]
    if interp == "linear":
        return ys[idx] + theta.unsqueeze(-1) * (ys[idx + 1] - ys[idx])
    slopes = list(slopes or [])
    slopes += [f(grid[k], ys[k]) for k in range(len(slopes), len(grid_host))]
    fs = torch.stack(slopes)
    return hermite(theta, dts[idx].unsqueeze(-1), ys[idx], ys[idx + 1], fs[idx], fs[idx + 1])


def bracket(grid: list[float], x: float) -> int:
    """Index k of the grid interval [grid[k], grid[k+1]] holding x (grid monotone either way)."""
    sign = 1.0 if grid[-1] >= grid[0] else -1.0
    lo, hi = 0, len(grid) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sign * (grid[mid] - x) <= 0:
            lo = mid
        else:
            hi = mid
    return lo


def step_until_event(step: FixedStep, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
                     name: str, atol: Tolerance, options: Mapping[str, Any], counter: Counter, event: Any,
                     time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> None:
    """Step by ``options['step_size']`` from ``t[0]`` towards ``t[1]`` until ``event`` (an
    :class:`~neuralode.solvers.events.EventWatch`) changes sign, then locate the crossing in the last step."""
    step_size = options.get("step_size")
    if step_size is None:
        raise ValueError(f"event_fn with the fixed-step method {name!r} needs options['step_size'] "
                         "(the grid t is only [t0, t1])")
    direction = 1.0 if t_host[-1] >= t_host[0] else -1.0
    cubic = options.get("interp", "linear") == "cubic"
    on_step = callbacks.step if callbacks is not None else None
    y = y0
    for k in range(MAX_FIXED_EVENT_STEPS):
        ta, tb = t[0] + direction * step_size * k, t[0] + direction * step_size * (k + 1)
        dt = tb - ta
        if on_step is not None:
            on_step(ta, y, dt * direction)
        y1, f0 = step(ta, tb, y)
        counter.accepted += 1
        if event.crossed(tb, y1):
            y_a = y
            if cubic:
                f0 = f(ta, y_a) if f0 is None else f0
                f1 = f(tb, y1)
                interp = lambda s: hermite(((s - ta) / dt)[None], dt, y_a, y1, f0, f1)[0]  # noqa: E731
            else:
                interp = lambda s: y_a + (s - ta) / dt * (y1 - y_a)  # noqa: E731
            event.locate(interp, ta, tb, step_size, atol)
            return
        y = y1
    raise MaxNumStepsError(f"no event within {MAX_FIXED_EVENT_STEPS} steps of size {step_size:.3g} from "
                           f"t={time_sign * t_host[0]:.6g}; check event_fn or raise options['step_size']")
