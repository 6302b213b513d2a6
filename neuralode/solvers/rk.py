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
from collections.abc import Mapping
from typing import Any

import torch

from neuralode.solvers import compiled
from neuralode.solvers.common import Counter, Dynamics, StepBudget, StepCallbacks, nudged
from neuralode.solvers.controller import initial_step, make_controller
from neuralode.solvers.errors import NonFiniteError, StepUnderflowError
from neuralode.solvers.grid import grid_outputs, march, stage_times, step_grid, step_until_event
from neuralode.solvers.method import Method
from neuralode.solvers.norms import Norm, Tolerance, error_scale
from neuralode.solvers.tableaus import ButcherTableau

# Finite so that a too-tight tolerance fails with a message instead of running for hours.
# Consecutive rejections for non-finite values before giving up (dfactor**40 is far below any useful h).
_MAX_NONFINITE_REJECTS = 40


def _step_tensor(h: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return h if torch.is_tensor(h) else torch.tensor(h, dtype=like.dtype, device=like.device)


def stage_derivatives(a_rows: list[torch.Tensor], f: Dynamics, stage_t, y: torch.Tensor, h: float | torch.Tensor,
            f0: torch.Tensor) -> torch.Tensor:
    """Stage derivatives ``K`` of one step, shape ``(stages, N)``; ``K[0] = f0 = f(stage_t[0], y)``."""
    k = y.new_empty((len(a_rows) + 1,) + y.shape)
    k[0] = f0
    for i, row in enumerate(a_rows, start=1):
        # One fused y + h * (K[:i]^T a_i) when h is a host number; a device h needs a separate multiply.
        yi = torch.addmv(y, k[:i].T, row, alpha=h) if isinstance(h, float) else y + h * (row @ k[:i])
        k[i] = f(stage_t[i], yi)
    return k


class FixedGridRK(Method):
    """Fixed steps on the grid ``t``, on a uniform grid from ``t[0]`` to ``t[-1]`` (``options=dict(step_size=h)``,
    the last step shortened) or on ``options['grid_constructor'](f, y0, t)``; outputs off the grid come from
    linear (``interp='linear'``, default) or cubic Hermite (``interp='cubic'``) interpolation, as in torchdiffeq.
    ``perturb=True`` evaluates each step's first stage just after its start time and stages at its end time
    just before it, so a discontinuity of ``f`` on a grid point is seen from the side the step lies on."""

    valid_options = ("step_size", "grid_constructor", "interp", "perturb")
    valid_callbacks = frozenset({"callback_step"})
    supports_events = True

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None, *,
              rtol: Tolerance, atol: Tolerance, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> torch.Tensor:
        co = self.tableau.tensors(y0.dtype, y0.device)
        grid, grid_host = step_grid(f, y0, t, t_host, options)
        # Inside CUDA-graph capture the direction stays on the device (t_host is None).
        direction = torch.sign(t[-1] - t[0]) if t_host is None else (1.0 if t_host[-1] >= t_host[0] else -1.0)
        dts = grid[1:] - grid[:-1]
        # All stage times at once: the steps only index device tensors, never read them.
        stage_t = stage_times(co["c"], self.tableau.c, grid[:-1], grid[1:], bool(options.get("perturb", False)),
                              direction)

        def step(k: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f0 = f(stage_t[k, 0], y)  # f at a grid point: a cubic output's slope there
            return y + dts[k] * (co["b"] @ stage_derivatives(co["a_rows"], f, stage_t[k], y, dts[k], f0)), f0

        interp = options.get("interp", "linear")
        states, slopes = march(step, grid, y0, direction, callbacks, counter, keep_slopes=interp == "cubic")
        return grid_outputs(f, t, t_host, grid, grid_host, states, slopes, interp)

    def solve_until_event(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
                          rtol: Tolerance, atol: Tolerance, norm: Norm, options: Mapping[str, Any], counter: Counter,
                          event: Any, time_sign: float = 1.0, callbacks: StepCallbacks | None = None) -> None:
        """Fixed steps of ``options['step_size']`` until ``event`` changes sign (see :func:`step_until_event`)."""
        co = self.tableau.tensors(y0.dtype, y0.device)
        direction = 1.0 if t_host[-1] >= t_host[0] else -1.0
        perturb = bool(options.get("perturb", False))

        def step(ta: torch.Tensor, tb: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            times = stage_times(co["c"], self.tableau.c, ta[None], tb[None], perturb, direction)[0]
            f0 = f(times[0], y)
            return y + (tb - ta) * (co["b"] @ stage_derivatives(co["a_rows"], f, times, y, tb - ta, f0)), f0

        step_until_event(step, f, y0, t, t_host, name=self.name, atol=atol, options=options, counter=counter,
                         event=event, time_sign=time_sign, callbacks=callbacks)


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


class AdaptiveRK(Method):
    """Embedded RK pair with adaptive steps (``options["controller"]``) and dense output at the requested times.

    ``t`` must be increasing here (odeint maps decreasing time onto increasing time).
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
              time_sign: float = 1.0, callbacks: StepCallbacks | None = None, event: Any = None,
              land: bool = False) -> torch.Tensor:
        """``land``: end exactly on the last output time whatever the controller (the adjoint's intervals: the
        next one starts there)."""
        if options.get("compile") and compiled.takes(self.name, options, callbacks, event):
            return compiled.solve(self, f, y0, t, t_host, rtol=rtol, atol=atol, norm=norm, options=options,
                                  counter=counter, time_sign=time_sign, land=land)
        tab = self.tableau
        co = tab.tensors(y0.dtype, y0.device)
        n_out = len(t_host)
        blocks = [y0[None]]
        if n_out == 1:
            return blocks[0]
        ctrl = make_controller(options, tab.error_order)
        user_t = lambda s: time_sign * s  # noqa: E731  (times in messages are the caller's times)
        # No cap unless asked (torchdiffeq has none either); the training runner sets one per solve.
        budget = StepBudget(options, lambda: f"method {tab.name!r} reached t={user_t(tn_host):.6g} of "
                                             f"[{user_t(t_host[0]):.6g}, {user_t(t_host[-1]):.6g}]")
        # Times may be held in a wider dtype than the state (options['dtype']); f always sees the state's.
        c_time = co["c"].to(t.dtype)
        if t.dtype != y0.dtype:
            f_time, f = f, lambda s, y: f_time(s.to(y.dtype), y)
        state_time = (lambda s: s.to(y0.dtype) if torch.is_tensor(s) else s) if t.dtype != y0.dtype else (lambda s: s)
        # Output times for _interpolate: relative to the step start in the state's dtype when time is wider.
        out_times = ((lambda ts, t0: (state_time(ts - t0), 0.0)) if t.dtype != y0.dtype else (lambda ts, t0: (ts, t0)))
        stops, stop_is_jump, stops_dev = _stop_times(options, t_host[0], time_sign, t)
        # The integral controller steps past the last output (torchdiffeq's steps); stops and events land.
        may_overshoot = not (land or ctrl.lands_on_last_output or event is not None)
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

        next_out, bad = 1, 0
        target = n_out - 1  # outputs before the last come from the dense output, not from steps landing on them
        while next_out < n_out:
            # The step ends at most on the last output time or the next step_t/jump_t time.
            on_stop = next_stop < len(stops) and stops[next_stop] <= t_host[target]
            goal_host, goal = (stops[next_stop], stops_dev[next_stop]) if on_stop else (t_host[target], t[target])
            remaining = goal_host - tn_host
            budget.spend()
            overshoot = may_overshoot and not on_stop
            # Stretch by up to 1% rather than leave a sliver of a step (as Hairer's codes do).
            lands = 1.01 * h >= remaining and not overshoot
            if lands:
                # Differentiable in the target time, so gradients w.r.t. t reach outputs we land on.
                h_step, h_dev, t_new, t_new_host = remaining, goal - tn, goal, goal_host
            else:
                # Two steps are needed to land either way: make them equal rather than a full step and a
                # sliver. The full step is the one likeliest to be rejected (6 wasted NFE on the ODE-Net).
                h_step = h_dev = remaining / 2 if remaining < 2 * h and not overshoot else h
                t_new, t_new_host = tn + h_step, tn_host + h_step
                if t_new_host == tn_host:
                    raise StepUnderflowError(f"step size underflow at t={user_t(tn_host):.6g} (h={h:.3g}); "
                                         "the problem may be stiff or the dynamics non-finite")
            on_jump = lands and on_stop and stop_is_jump[next_stop]
            if on_step is not None:
                on_step(tn, y, _step_tensor(h_dev, tn))
            # All stage times in one kernel (not one per stage): on a GPU the launches add up.
            stage_t = tn + c_time * h_dev
            if on_jump:  # stages at the step's end see f just before the discontinuity
                stage_t = torch.where(c_time == 1, nudged(t_new, -1.0), stage_t)
            k = stage_derivatives(co["a_rows"], f, stage_t, y, state_time(h_dev), f0)
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
            while j < n_out and (t_host[j] < t_new_host or overshoot and t_host[j] == t_new_host):
                j += 1
            if j > next_out:
                budget.output_reached()
                blocks.append(self._interpolate(co, *out_times(t[next_out:j], tn), state_time(h_dev), y, y1, f0, f1, k))
            if reached:  # the final output time itself: take the step's end point exactly
                blocks.append(y1[None])
                j = n_out
            next_out = j
            if on_jump:  # the next step starts just after the discontinuity
                f1 = f(nudged(t_new, 1.0), y1)
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
