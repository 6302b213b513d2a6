"""One explicit Runge-Kutta stepper driven by a Butcher tableau, in a fixed-grid and an adaptive loop.

Both loops work on a flat state vector ``y`` of shape ``(N,)`` and a dynamics ``f(t, y) -> (N,)`` (the
public API flattens tensors and tuples into that form). The stage derivatives of a step live in one
``(stages, N)`` buffer and every linear combination of them is a single matrix-vector product.

Host synchronisation: the fixed-grid loop never reads a device value, so it can be captured in a CUDA
graph. The adaptive loop reads exactly one scalar per attempted step: the error ratio, which decides
accept/reject; step sizes and times are then tracked on the host. Solving until an event (``event_fn``)
adds one read per accepted step: the event's sign.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuralode.solvers.controller import PIController, initial_step
from neuralode.solvers.norms import Norm, error_scale
from neuralode.solvers.tableaus import ButcherTableau

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Finite so that a too-tight tolerance fails with a message instead of running for hours.
# Consecutive rejections for non-finite values before giving up (dfactor**40 is far below any useful h).
_MAX_NONFINITE_REJECTS = 40
# torchdiffeq's cap on the steps a fixed-step solve may take looking for an event.
_MAX_FIXED_EVENT_STEPS = 20000


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


def _nudged(t: torch.Tensor, direction: float | torch.Tensor) -> torch.Tensor:
    """``t`` moved by one ulp towards ``direction`` (torchdiffeq's ``perturb``: which side of a discontinuity
    ``f`` is evaluated on), still carrying ``t``'s gradient."""
    return t + (torch.nextafter(t.detach(), t.detach() + direction) - t.detach())


def _step_tensor(h: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return h if torch.is_tensor(h) else torch.tensor(h, dtype=like.dtype, device=like.device)


def _stages(a_rows: list[torch.Tensor], f: Dynamics, stage_t, y: torch.Tensor, h: float | torch.Tensor,
            f0: torch.Tensor) -> torch.Tensor:
    """Stage derivatives ``K`` of one step, shape ``(stages, N)``; ``K[0] = f0 = f(stage_t[0], y)``."""
    k = y.new_empty((len(a_rows) + 1,) + y.shape)
    k[0] = f0
    for i, row in enumerate(a_rows, start=1):
        # One fused y + h * (K[:i]^T a_i) when h is a host number; a device h needs a separate multiply.
        yi = torch.addmv(y, k[:i].T, row, alpha=h) if isinstance(h, float) else y + h * (row @ k[:i])
        k[i] = f(stage_t[i], yi)
    return k


class FixedGridRK:
    """Fixed steps on the grid ``t``, on a uniform grid from ``t[0]`` to ``t[-1]`` (``options=dict(step_size=h)``,
    the last step shortened) or on ``options['grid_constructor'](f, y0, t)``; outputs off the grid come from
    linear (``interp='linear'``, default) or cubic Hermite (``interp='cubic'``) interpolation, as in torchdiffeq.
    ``perturb=True`` evaluates each step's first stage just after its start time and stages at its end time
    just before it, so a discontinuity of ``f`` on a grid point is seen from the side the step lies on."""

    adaptive = False
    increasing_time_only = False
    valid_options = ("step_size", "grid_constructor", "interp", "perturb")
    valid_callbacks = frozenset({"callback_step"})

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def _stage_times(self, co: dict, starts: torch.Tensor, ends: torch.Tensor, perturb: bool,
                     direction: float | torch.Tensor) -> torch.Tensor:
        """Stage times ``(steps, stages)`` of the steps ``[starts[k], ends[k]]``, all in one go."""
        stage_t = starts[:, None] + (ends - starts)[:, None] * co["c"]
        if perturb:
            stage_t[:, 0] = _nudged(starts, direction)
            for i, ci in enumerate(self.tableau.c):
                if ci == 1.0:
                    stage_t[:, i] = _nudged(ends, -direction)
        return stage_t

    def _grid(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None,
              options: Mapping[str, Any]) -> tuple[torch.Tensor, list[float] | None]:
        """The step grid and its host copy (``None`` when the grid is ``t`` itself: no interpolation)."""
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

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None, *,
              rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> torch.Tensor:
        co = self.tableau.tensors(y0.dtype, y0.device)
        grid, grid_host = self._grid(f, y0, t, t_host, options)
        # Inside CUDA-graph capture the direction stays on the device (t_host is None).
        direction = torch.sign(t[-1] - t[0]) if t_host is None else (1.0 if t_host[-1] >= t_host[0] else -1.0)
        dts = grid[1:] - grid[:-1]
        # All stage times at once: the loop below only indexes device tensors, never reads them.
        stage_t = self._stage_times(co, grid[:-1], grid[1:], bool(options.get("perturb", False)), direction)
        on_step = callbacks.step if callbacks is not None else None
        cubic = grid_host is not None and options.get("interp", "linear") == "cubic"
        states, slopes = [y0], []
        y = y0
        for k in range(dts.shape[0]):
            dt = dts[k]
            if on_step is not None:
                on_step(grid[k], y, dt * direction)
            f0 = f(stage_t[k, 0], y)
            kk = _stages(co["a_rows"], f, stage_t[k], y, dt, f0)
            y = y + dt * (co["b"] @ kk)
            states.append(y)
            if cubic:
                slopes.append(f0)
        counter.accepted += dts.shape[0]
        ys = torch.stack(states)
        if grid_host is None:
            return ys
        # Interpolation of the grid states at the requested times (indices found on the host).
        last = len(grid_host) - 2
        idx = torch.tensor([min(last, max(0, _bracket(grid_host, tj))) for tj in t_host], device=y0.device)
        theta = (t - grid[idx]) / dts[idx]
        if not cubic:
            return ys[idx] + theta.unsqueeze(-1) * (ys[idx + 1] - ys[idx])
        # Cubic Hermite: f at a grid point is the next step's first stage; the end point costs one evaluation.
        slopes.append(f(grid[-1], ys[-1]))
        fs = torch.stack(slopes)
        return _hermite(theta, dts[idx].unsqueeze(-1), ys[idx], ys[idx + 1], fs[idx], fs[idx + 1])

    def solve_until_event(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
                          rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
                          event: Any, time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> None:
        """Step by ``options['step_size']`` from ``t[0]`` in the direction of ``t[1]`` until ``event`` (an
        :class:`~neuralode.solvers.events.EventWatch`) sees its sign change, and locate the crossing."""
        step_size = options.get("step_size")
        if step_size is None:
            raise ValueError(f"event_fn with the fixed-step method {self.name!r} needs options['step_size'] "
                             "(the grid t is only [t0, t1])")
        co = self.tableau.tensors(y0.dtype, y0.device)
        direction = 1.0 if t_host[-1] >= t_host[0] else -1.0
        perturb = bool(options.get("perturb", False))
        cubic = options.get("interp", "linear") == "cubic"
        on_step = callbacks.step if callbacks is not None else None
        t0, y = t[:1], y0
        for k in range(_MAX_FIXED_EVENT_STEPS):
            ta, tb = t0 + direction * step_size * k, t0 + direction * step_size * (k + 1)
            dt = (tb - ta)[0]
            if on_step is not None:
                on_step(ta[0], y, dt * direction)
            stage_t = self._stage_times(co, ta, tb, perturb, direction)[0]
            f0 = f(stage_t[0], y)
            y1 = y + dt * (co["b"] @ _stages(co["a_rows"], f, stage_t, y, dt, f0))
            counter.accepted += 1
            if event.crossed(tb[0], y1):
                y_a, t_a = y, ta[0]
                if cubic:
                    f1 = f(tb[0], y1)
                    interp = lambda s: _hermite(((s - t_a) / dt)[None], dt, y_a, y1, f0, f1)[0]  # noqa: E731
                else:
                    interp = lambda s: y_a + (s - t_a) / dt * (y1 - y_a)  # noqa: E731
                event.locate(interp, t_a, tb[0], step_size, atol)
                return
            y = y1
        raise MaxNumStepsError(f"no event within {_MAX_FIXED_EVENT_STEPS} steps of size {step_size:.3g} from "
                               f"t={t_host[0]:.6g}; check event_fn or raise options['step_size']")


def _hermite(theta: torch.Tensor, h: float | torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor,
             f1: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite through ``(y0, f0)`` and ``(y1, f1)`` at ``theta`` (``(m,)``) of a step ``h``: ``(m, N)``."""
    theta = theta.unsqueeze(-1)
    t2, t3 = theta * theta, theta * theta * theta
    return y0 + (3 * t2 - 2 * t3) * (y1 - y0) + h * ((t3 - 2 * t2 + theta) * f0 + (t3 - t2) * f1)


def _stop_times(options: Mapping[str, Any], t0: float, time_sign: float,
                like: torch.Tensor) -> tuple[list[float], list[bool], torch.Tensor | None]:
    """``options['step_t']`` and ``['jump_t']`` after ``t0`` in the solver's time, sorted: the host values, whether
    each is a jump, and the values on the device (steps land on them exactly)."""
    marked = [(time_sign * float(v), is_jump) for key, is_jump in (("step_t", False), ("jump_t", True))
              for v in _host_times(options.get(key))]
    values = [v for v, _ in marked]
    if len(set(values)) != len(values):
        raise ValueError("options['step_t'] and options['jump_t'] must not repeat a time, within or between them")
    marked = sorted(m for m in marked if m[0] > t0)
    values = [v for v, _ in marked]
    return values, [j for _, j in marked], torch.tensor(values, dtype=like.dtype, device=like.device) if values else None


def _host_times(times: Any) -> list[float]:
    if times is None:
        return []
    if torch.is_tensor(times):
        return times.detach().reshape(-1).cpu().tolist()
    return [float(v) for v in times]


def _bracket(grid: list[float], x: float) -> int:
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


class AdaptiveRK:
    """Embedded RK pair with a PI step-size controller and dense output at the requested times.

    ``t`` must be increasing here (odeint maps decreasing time onto increasing time).
    """

    adaptive = True
    increasing_time_only = True
    valid_options = ("first_step", "safety", "ifactor", "dfactor", "min_step", "max_step",
                     "max_num_steps", "norm", "step_t", "jump_t", "dtype")
    valid_callbacks = frozenset({"callback_step", "callback_accept_step", "callback_reject_step"})

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def solve_until_event(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
                          rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
                          event: Any, time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> None:
        """Step from ``t[0]`` (increasing time, with no end) until ``event`` (an
        :class:`~neuralode.solvers.events.EventWatch`) sees its sign change, and locate the crossing."""
        endless = torch.cat([t[:1], t.new_full((1,), math.inf)])
        self.solve(f, y0, endless, [t_host[0], math.inf], rtol=rtol, atol=atol, norm=norm, options=options,
                   counter=counter, time_sign=time_sign, callbacks=callbacks, event=event)

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
              rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0, callbacks: StepCallbacks | None = None, event: Any = None) -> torch.Tensor:
        tab = self.tableau
        co = tab.tensors(y0.dtype, y0.device)
        n_out = len(t_host)
        blocks = [y0[None]]
        if n_out == 1:
            return blocks[0]
        ctrl = PIController(tab.error_order, float(options.get("safety", 0.9)), float(options.get("ifactor", 10.0)),
                            float(options.get("dfactor", 0.2)), float(options.get("min_step", 0.0)),
                            float(options.get("max_step", math.inf)))
        # No cap unless asked (torchdiffeq has none either); the training runner sets one (RUNNER_MAX_NUM_STEPS).
        max_steps = options.get("max_num_steps") or math.inf
        user_t = lambda s: time_sign * s  # noqa: E731  (times in messages are the caller's times)
        # Times may be held in a wider dtype than the state (options['dtype']); f always sees the state's.
        c_time = co["c"].to(t.dtype)
        if t.dtype != y0.dtype:
            f_time, f = f, lambda s, y: f_time(s.to(y.dtype), y)
        state_time = (lambda s: s.to(y0.dtype) if torch.is_tensor(s) else s) if t.dtype != y0.dtype else (lambda s: s)
        # Output times for _interpolate: relative to the step start in the state's dtype when time is wider.
        out_times = ((lambda ts, t0: (state_time(ts - t0), 0.0)) if t.dtype != y0.dtype else (lambda ts, t0: (ts, t0)))
        stops, stop_is_jump, stops_dev = _stop_times(options, t_host[0], time_sign, t)
        next_stop = 0
        on_step, on_accept, on_reject = (callbacks.step, callbacks.accept, callbacks.reject) if callbacks else (None,) * 3

        tn, tn_host, y = t[0], t_host[0], y0
        f0 = f(tn, y)
        if options.get("first_step") is not None:
            h = float(options["first_step"])
        else:
            with torch.no_grad():
                h = float(initial_step(f, tn.detach(), y.detach(), f0.detach(), tab.error_order, rtol, atol, norm))
            if not math.isfinite(h):
                if not bool(torch.isfinite(f0).all()):
                    raise NonFiniteError(f"the ODE function returned non-finite values at t={user_t(tn_host):.6g} "
                                         "(initial state); check the dynamics and y0")
                # Only the probe step beyond t0 overflowed: start small and let rejection shrink further.
                span = t_host[-1] - t_host[0]  # infinite for an event solve
                h = 1e-3 * (span if math.isfinite(span) else 1.0)
        h = min(ctrl.max_step, max(ctrl.min_step, h))

        next_out, attempts, bad = 1, 0, 0
        target = n_out - 1  # outputs before the last come from the dense output, not from steps landing on them
        while next_out < n_out:
            # The step ends at most on the last output time or the next step_t/jump_t time.
            on_stop = next_stop < len(stops) and stops[next_stop] <= t_host[target]
            goal_host, goal = (stops[next_stop], stops_dev[next_stop]) if on_stop else (t_host[target], t[target])
            remaining = goal_host - tn_host
            attempts += 1
            if attempts > max_steps:
                raise MaxNumStepsError(
                    f"max_num_steps={max_steps} exceeded: method {tab.name!r} reached t={user_t(tn_host):.6g} of "
                    f"[{user_t(t_host[0]):.6g}, {user_t(t_host[-1]):.6g}]; loosen rtol/atol, raise "
                    "options['max_num_steps'], or use a fixed-step method (e.g. method='rk4', "
                    "options=dict(step_size=...))")
            # Stretch by up to 1% rather than leave a sliver of a step (as Hairer's codes do).
            lands = 1.01 * h >= remaining
            if lands:
                # Differentiable in the target time, so gradients w.r.t. t reach outputs we land on.
                h_step, h_dev, t_new, t_new_host = remaining, goal - tn, goal, goal_host
            else:
                # Two steps are needed to land either way: make them equal rather than a full step and a
                # sliver. The full step is the one likeliest to be rejected (6 wasted NFE on the ODE-Net).
                h_step = h_dev = remaining / 2 if remaining < 2 * h else h
                t_new, t_new_host = tn + h_step, tn_host + h_step
                if t_new_host == tn_host:
                    raise NonFiniteError(f"step size underflow at t={user_t(tn_host):.6g} (h={h:.3g}); "
                                         "the problem may be stiff or the dynamics non-finite")
            on_jump = lands and on_stop and stop_is_jump[next_stop]
            if on_step is not None:
                on_step(tn, y, _step_tensor(h_dev, tn))
            # All stage times in one kernel (not one per stage): on a GPU the launches add up.
            stage_t = tn + c_time * h_dev
            if on_jump:  # stages at the step's end see f just before the discontinuity
                stage_t = torch.where(c_time == 1, _nudged(t_new, -1.0), stage_t)
            k = _stages(co["a_rows"], f, stage_t, y, state_time(h_dev), f0)
            comb = co["b_and_error"] @ k  # (2 or 3, N): solution and error combinations in one product
            y1 = y + h_dev * comb[0]
            with torch.no_grad():  # step control is not differentiated
                scale = error_scale(norm, y, y1, rtol, atol)  # rtol/atol: numbers or per-element (N,) tensors
                err = norm(comb[1].mul(h_dev).div_(scale))
                if comb.shape[0] == 3:  # DOP853: e^2 / sqrt(e^2 + 0.01 e3^2)
                    err3 = norm(comb[2].mul(h_dev).div_(scale))
                    err = err * err / torch.sqrt(err * err + 0.01 * err3 * err3).clamp_min(torch.finfo(err.dtype).tiny)
                ratio = float(err)  # the one host sync of this step
            # A step already at min_step is taken whatever its error, as torchdiffeq does: rejecting it again
            # could only repeat it.
            accepted = ratio <= 1.0 or (ctrl.min_step > 0 and h_step <= ctrl.min_step and math.isfinite(ratio))
            h_next = ctrl.next_step(h_step, ratio, accepted)
            if not accepted:
                if on_reject is not None:
                    on_reject(tn, y, _step_tensor(h_dev, tn))
                counter.rejected += 1
                bad = bad + 1 if not math.isfinite(ratio) else 0
                if bad > _MAX_NONFINITE_REJECTS:
                    raise NonFiniteError(
                        f"the ODE function returned non-finite values near t={user_t(tn_host):.6g} and shrinking "
                        f"the step to {h_step:.3g} did not help; check the dynamics for overflow")
                h = h_next
                continue
            if on_accept is not None:
                on_accept(tn, y, _step_tensor(h_dev, tn))
            counter.accepted += 1
            bad = 0
            f1 = k[-1] if tab.fsal or tab.reuse_last_stage else f(t_new, y1)
            if event is not None and event.crossed(t_new, y1):
                y_a, t_a, h_a = y, tn, state_time(h_dev)
                event.locate(lambda s: self._interpolate(co, *out_times(s[None], t_a), h_a, y_a, y1, f0, f1, k)[0],
                             t_a, t_new, h_step, atol)
                break
            if on_stop and lands:
                next_stop += 1
            reached = lands and t_new_host == t_host[target]
            j = next_out
            while j < n_out and t_host[j] < t_new_host:
                j += 1
            if j > next_out:
                blocks.append(self._interpolate(co, *out_times(t[next_out:j], tn), state_time(h_dev), y, y1, f0, f1, k))
            if reached:  # the final output time itself: take the step's end point exactly
                blocks.append(y1[None])
                j = n_out
            next_out = j
            if on_jump:  # the next step starts just after the discontinuity
                f1 = f(_nudged(t_new, 1.0), y1)
            # Keep the proposed step after a step shortened to land on a time: landing says nothing bad.
            h = max(h_next, h) if lands else h_next
            tn, tn_host, y, f0 = t_new, t_new_host, y1, f1
        counter.next_step = h
        return torch.cat(blocks)

    def _interpolate(self, co: dict, t_out: torch.Tensor, t0: torch.Tensor, h: float | torch.Tensor,
                     y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                     k: torch.Tensor) -> torch.Tensor:
        """States at ``t_out`` (inside the step just taken), shape ``(len(t_out), N)``."""
        theta = (t_out - t0) / h
        if self.tableau.interpolation == "polynomial":
            dense = co["dense"]  # (stages [+ 1], degree): b_i(theta) = sum_j dense[i, j] theta^(j+1)
            powers = torch.stack([theta ** (j + 1) for j in range(dense.shape[1])])  # (degree, m)
            if dense.shape[0] > k.shape[0]:  # the extension also weighs f(t + h, y_new)
                k = torch.cat([k, f1[None]])
            return y0 + h * (dense @ powers).T @ k
        # Cubic Hermite through (y0, f0) and (y1, f1).
        t2, t3 = theta * theta, theta * theta * theta
        coef = torch.stack([3 * t2 - 2 * t3, (t3 - 2 * t2 + theta) * h, (t3 - t2) * h], dim=1)  # (m, 3)
        return y0 + coef @ torch.stack([y1 - y0, f0, f1])
