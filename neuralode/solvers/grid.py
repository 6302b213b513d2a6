"""What the fixed-grid methods (explicit RK, implicit RK, Adams) share: the step grid, stage times with
torchdiffeq's ``perturb``, the one fixed-grid loop (:func:`march`, which also searches for an event), and
outputs between grid points. A method family supplies only its stepper."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from neuralode.solvers.common import Counter, Dynamics, MaxNumStepsError, StepCallbacks, hermite, nudged
from neuralode.solvers.events import EventWatch
from neuralode.solvers.problem import Method, Problem

# The options every fixed-grid method takes (torchdiffeq's names).
GRID_OPTIONS = ("step_size", "grid_constructor", "interp", "perturb")
# torchdiffeq's cap on the steps a fixed-step solve may take looking for an event.
MAX_FIXED_EVENT_STEPS = 20000
# The most steps a step_size grid may have: its host copy alone takes ~32 bytes a step (320 MB here), and the
# solve hours; a smaller step_size over a long span is refused before anything is built.
MAX_GRID_STEPS = 10_000_000


@dataclass
class Grid:
    """The times a fixed-step solve steps on (``times``, ``(K + 1,)``) and their host copy (``host``; None inside
    CUDA-graph capture); ``on_t``: the grid is ``t`` itself, so the states on it are the outputs; ``step_size``:
    the uniform step of an event search; ``direction``: the sign of the steps (a device tensor inside capture)."""

    times: torch.Tensor
    host: list[float] | None
    direction: float | torch.Tensor
    on_t: bool = False
    step_size: float | None = None
    dts: torch.Tensor = field(init=False)  # the steps, times[k + 1] - times[k]

    def __post_init__(self) -> None:
        self.dts = self.times[1:] - self.times[:-1]


class GridStepper(ABC):
    """A family's steps over one grid: ``stepper(k, y)`` is the state at ``grid.times[k + 1]`` from ``y`` at
    ``grid.times[k]``, and ``f(grid.times[k], y)`` (the slope cubic outputs use) or None for a method that does not
    evaluate it (it is then evaluated only where a cubic output needs it)."""

    @abstractmethod
    def __call__(self, k: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def finish(self) -> None:
        """Called once the loop is done, e.g. to warn about steps whose iteration did not converge."""


class FixedGridMethod(Method):
    """A method on a grid: ``t``, a uniform grid of ``options['step_size']`` (the last step shortened) or
    ``options['grid_constructor'](f, y0, t)``; outputs off the grid are interpolated (``interp``: ``'linear'`` or
    ``'cubic'`` Hermite). An event search steps by ``step_size`` from ``t[0]``, with no end but torchdiffeq's cap."""

    valid_options: tuple[str, ...] = GRID_OPTIONS
    valid_callbacks = frozenset({"callback_step"})
    supports_events = True

    @abstractmethod
    def stepper(self, prob: Problem, f: Dynamics, y0: torch.Tensor, grid: Grid) -> GridStepper: ...

    def solve(self, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter, *,
              callbacks: StepCallbacks | None = None, event: EventWatch | None = None,
              land: bool = False) -> torch.Tensor:
        grid = step_grid(prob, f, y0) if event is None else event_grid(prob, self.name)
        stepper = self.stepper(prob, f, y0, grid)
        interp = prob.options.get("interp", "linear")
        search = None if event is None else _EventSearch(event, f, interp == "cubic", grid, prob)
        states, slopes = march(stepper, grid, y0, callbacks, counter, keep_slopes=interp == "cubic", search=search)
        stepper.finish()
        if event is not None:
            return torch.stack([y0, event.state])
        return grid_outputs(f, prob.t, prob.t_host, grid, states, slopes, interp)


def step_grid(prob: Problem, f: Dynamics, y0: torch.Tensor) -> Grid:
    """``t``, a uniform grid of ``options['step_size']`` (the last step shortened) or
    ``options['grid_constructor'](f, y0, t)``."""
    t, t_host, options = prob.t, prob.t_host, prob.options
    step_size = options.get("step_size")
    constructor = options.get("grid_constructor")
    # Inside CUDA-graph capture the direction stays on the device (t_host is None).
    direction = torch.sign(t[-1] - t[0]) if t_host is None else (1.0 if t_host[-1] >= t_host[0] else -1.0)
    if step_size is None and constructor is None:
        return Grid(t, t_host, direction, on_t=True)
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
        return Grid(torch.cat([t[:1] + steps, t[-1:]]), grid_host, direction)
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
    return Grid(grid, grid_host, direction)


def event_grid(prob: Problem, name: str) -> Grid:
    """Steps of ``options['step_size']`` from ``t[0]`` in the direction of ``t[1]``, as many as an event search may
    take. Each time is ``t[0]`` plus a host offset, as torchdiffeq computes them."""
    step_size, t_host = prob.options.get("step_size"), prob.t_host
    if step_size is None:
        raise ValueError(f"event_fn with the fixed-step method {name!r} needs options['step_size'] "
                         "(the grid t is only [t0, t1])")
    direction = 1.0 if t_host[-1] >= t_host[0] else -1.0
    offsets = [direction * step_size * k for k in range(MAX_FIXED_EVENT_STEPS + 1)]
    times = prob.t[:1] + torch.tensor(offsets, dtype=prob.t.dtype, device=prob.t.device)
    return Grid(times, [t_host[0] + offset for offset in offsets], direction, step_size=step_size)


def march(step: GridStepper, grid: Grid, y0: torch.Tensor, callbacks: StepCallbacks | None, counter: Counter,
          keep_slopes: bool, search: _EventSearch | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The one fixed-grid loop of every fixed-step family: ``step`` over each interval of ``grid``, the user's step
    hook before each. Returns the states on the grid, ``(len(grid), N)``, and (``keep_slopes``: for cubic outputs)
    the slopes the steps gave. Reads nothing from the device, except that ``search`` reads the event's sign after
    each step and stops the loop where it changes (the states are then only those up to there)."""
    on_step = callbacks.step if callbacks is not None else None
    times, dts = grid.times, grid.dts
    states, slopes, y = [y0], [], y0
    for k in range(dts.shape[0]):
        if on_step is not None:
            on_step(times[k], y, dts[k] * grid.direction)
        y1, slope = step(k, y)
        if search is not None and search.stops(k, y, y1, slope):
            counter.accepted += k + 1
            return torch.stack(states), slopes
        states.append(y1)
        if keep_slopes and slope is not None:
            slopes.append(slope)
        y = y1
    counter.accepted += dts.shape[0]
    if search is not None:
        search.not_found()
    return torch.stack(states), slopes


class _EventSearch:
    """The event feature of the fixed-grid loop: after each step, whether the event's sign changed; if so the
    crossing is located on the step's interpolant (linear, or cubic Hermite with ``interp='cubic'``)."""

    def __init__(self, event: EventWatch, f: Dynamics, cubic: bool, grid: Grid, prob: Problem) -> None:
        self.event, self.f, self.cubic, self.grid, self.prob = event, f, cubic, grid, prob

    def stops(self, k: int, y_a: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor | None) -> bool:
        ta, tb = self.grid.times[k], self.grid.times[k + 1]
        if not self.event.crossed(tb, y1):
            return False
        dt = tb - ta
        if self.cubic:
            f0 = self.f(ta, y_a) if f0 is None else f0
            f1 = self.f(tb, y1)
            interp = lambda s: hermite(((s - ta) / dt)[None], dt, y_a, y1, f0, f1)[0]  # noqa: E731
        else:
            interp = lambda s: y_a + (s - ta) / dt * (y1 - y_a)  # noqa: E731
        self.event.locate(interp, ta, tb, self.grid.step_size, self.prob.atol)
        return True

    def not_found(self) -> None:
        prob = self.prob
        raise MaxNumStepsError(f"no event within {MAX_FIXED_EVENT_STEPS} steps of size {self.grid.step_size:.3g} from "
                               f"t={prob.time_sign * prob.t_host[0]:.6g}; check event_fn or raise options['step_size']")


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


def grid_outputs(f: Dynamics, t: torch.Tensor, t_host: list[float] | None, grid: Grid, ys: torch.Tensor,
                 slopes: list[torch.Tensor], interp: str) -> torch.Tensor:
    """The states at ``t`` from the states ``ys`` on the grid: ``ys`` itself when the grid is ``t``, else linear
    or cubic Hermite (``interp='cubic'``) interpolation. ``slopes``: ``f`` at the grid points the method already
    has (at least all but the last); missing ones cost an evaluation each."""
    if grid.on_t:
        return ys
    times, dts = grid.times, grid.dts
    last = len(grid.host) - 2
    # Interval indices found on the host, once per solve.
    idx = torch.tensor([min(last, max(0, bracket(grid.host, tj))) for tj in t_host], device=ys.device)
    theta = (t - times[idx]) / dts[idx]
    if interp == "linear":
        return ys[idx] + theta.unsqueeze(-1) * (ys[idx + 1] - ys[idx])
    slopes = slopes + [f(times[k], ys[k]) for k in range(len(slopes), len(grid.host))]
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
