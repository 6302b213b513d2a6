"""``options['compile']=True``: the attempted step of an embedded explicit RK method as one compiled program.

On cheap dynamics the eager loop (rk.py) spends most of a step dispatching small operations: the stage
combinations, the error estimate, its norm and the controller's arithmetic. Here one pure tensor function does
all of it (stages, solution, error estimate, error norm, accept/reject and the next step size), with the
tableau's coefficients and the controller's parameters as constants, and ``torch.compile`` traces it, dynamics
included, into one fused program per shape, dtype and grad mode. The loop around it stays on the host and makes
the eager loop's decisions (where a step ends, which outputs it covers, when to give up) from the step's
decision, which it reads in one transfer per attempted step: the one sync the eager loop has too.

Where ``torch.compile`` cannot be used (no C compiler, a platform it does not support, dynamics it cannot
trace), the same function runs eagerly after one warning. Steps of a solve with events, step hooks or
``step_t``/``jump_t`` are taken by the eager loop, which has those features.
"""
from __future__ import annotations

import logging
import math
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from neuralode.solvers.common import Counter, Dynamics, StepBudget, StepCallbacks
from neuralode.solvers.controller import PIController, StepController, initial_step, make_controller
from neuralode.solvers.errors import NonFiniteError, StepUnderflowError
from neuralode.solvers.norms import Norm, Tolerance, error_scale
from neuralode.solvers.tableaus import ButcherTableau

log = logging.getLogger(__name__)

# torch.compile's backend; tests that check the tracing rather than the generated code use "aot_eager".
BACKEND = "inductor"
# As rk.py: consecutive rejections for non-finite values before giving up.
_MAX_NONFINITE_REJECTS = 40
# Fallback warnings already given, by method and reason, so that a training run warns once.
_WARNED: set[tuple[str, str]] = set()
# Seconds each compilation took, by what it was compiled for (method, shape, dtype, grad mode): the cost that a
# solve's first call of a new kind pays, reported by compile_times() and logged.
_COMPILE_SECONDS: dict[str, float] = {}


def compile_times() -> dict[str, float]:
    """Seconds spent compiling steps in this process, by method, state shape, dtype and grad mode."""
    return dict(_COMPILE_SECONDS)


def _warn_once(method: str, reason: str, message: str) -> None:
    if (method, reason) not in _WARNED:
        _WARNED.add((method, reason))
        warnings.warn(message, stacklevel=5)


def _combination(weights: Sequence[float], terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_j weights[j] * terms[j]`` over the nonzero weights, unrolled so that the compiler sees constants."""
    total = None
    for w, term in zip(weights, terms):
        if w != 0.0:
            total = w * term if total is None else total + w * term
    return torch.zeros_like(terms[0]) if total is None else total


def make_step(tableau: ButcherTableau, ctrl: StepController) -> Callable[..., tuple]:
    """The attempted step of ``tableau`` under ``ctrl``'s rule, as a pure function

    ``step(f, norm, c_time, t0, y, f0, h, h_host, prev_ratio, rtol, atol) -> (y1, stages, decision, prev_ratio)``

    ``c_time``: the stage fractions in time's dtype; ``t0``, ``h``: 0-d tensors in time's dtype (``h`` carries the
    gradient w.r.t. an output time the step lands on); ``h_host``: the step as the host loop holds it (a float64 0-d
    tensor; a Python float would be traced as a constant first), which the controller scales, as the eager
    controller scales the host number; ``prev_ratio``: the PI controller's last accepted error ratio
    (float64, 0-d). ``decision`` is the float64 vector ``(error ratio, accepted, next step size)``.
    """
    a_rows, b, b_error, b_error2 = tableau.a, tableau.b, tableau.b_error, tableau.b_error2
    safety, ifactor, dfactor = ctrl.safety, ctrl.ifactor, ctrl.dfactor
    min_step, max_step = ctrl.min_step, ctrl.max_step
    is_pi = isinstance(ctrl, PIController)
    order = ctrl.error_order
    floor = ctrl.accepted_floor()

    def step(f: Dynamics, norm: Norm, c_time: torch.Tensor, t0: torch.Tensor, y: torch.Tensor, f0: torch.Tensor,
             h: torch.Tensor, h_host: torch.Tensor, prev_ratio: torch.Tensor, rtol: Tolerance, atol: Tolerance) -> tuple:
        stage_t = t0 + c_time * h
        h_state = h.to(y.dtype)
        stages = [f0]
        for i, row in enumerate(a_rows, start=1):
            stages.append(f(stage_t[i], y + h_state * _combination(row, stages)))
        y1 = y + h_state * _combination(b, stages)
        with torch.no_grad():  # step control is not differentiated
            scale = error_scale(norm, y, y1, rtol, atol)
            err = norm(_combination(b_error, stages) * h_state / scale)
            if b_error2 is not None:  # DOP853: e^2 / sqrt(e^2 + 0.01 e3^2)
                err3 = norm(_combination(b_error2, stages) * h_state / scale)
                err = err * err / torch.sqrt(err * err + 0.01 * err3 * err3).clamp_min(torch.finfo(err.dtype).tiny)
            ratio = err.to(torch.float64)
            finite = torch.isfinite(ratio)
            accepted = ratio <= 1.0
            if min_step > 0:  # a step already at min_step is taken whatever its (finite) error
                accepted = accepted | (finite & (h_host <= min_step))
            if is_pi:
                raw = safety * ratio ** -ctrl.alpha * prev_ratio ** ctrl.beta
            else:
                raw = safety * ratio ** (-1.0 / order)
            factor = torch.where(accepted, raw.clamp(floor, ifactor), raw.clamp(dfactor, 1.0))
            factor = torch.where(ratio == 0.0, ifactor, factor)
            factor = torch.where(finite, factor, dfactor)
            h_next = (h_host * factor).clamp(min_step, max_step)
            prev_ratio = torch.where(accepted & finite, ratio.clamp_min(1e-4), prev_ratio)
            decision = torch.stack([ratio, accepted.to(torch.float64), h_next])
        return y1, stages, decision, prev_ratio

    # A code object of its own per method and rule: torch.compile caches (and caps recompilations) per code object,
    # and the closures of one code object would share one cache, re-traced whenever another method ran.
    code = step.__code__.replace(co_name=f"{tableau.name}_{type(ctrl).__name__}_step")
    return types.FunctionType(code, step.__globals__, code.co_name, None, step.__closure__)


class CompiledStep:
    """One method's step under one controller rule: compiled on first use of each shape, dtype and grad mode
    (torch.compile's own cache), run eagerly from the first failure to compile on."""

    def __init__(self, tableau: ButcherTableau, ctrl: StepController) -> None:
        self.name = tableau.name
        self.evaluations = tableau.stages - 1  # the first stage is the previous step's last
        self.eager = make_step(tableau, ctrl)
        self.compiled = torch.compile(self.eager, fullgraph=True, backend=BACKEND)
        self.failed = False
        self.seen: set[tuple] = set()  # (shape, dtype, device, grad mode) already compiled, for compile_times()

    def __call__(self, counter: Counter, f: Dynamics, norm: Norm, c_time: torch.Tensor, t0: torch.Tensor,
                 y: torch.Tensor, *args: Any) -> tuple:
        if self.failed:
            return self.eager(f, norm, c_time, t0, y, *args)  # f counts its own calls when it runs eagerly
        signature = (y.shape, y.dtype, y.device, torch.is_grad_enabled())
        start = None if signature in self.seen else time.perf_counter()
        try:
            out = self._run(f, norm, c_time, t0, y, *args)
        except Exception as e:  # noqa: BLE001  (any failure to compile: the eager step does the same work)
            self.failed = True
            _warn_once(self.name, type(e).__name__,
                       f"options['compile']: the {self.name} step could not be compiled ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); taking eager steps")
            return self.eager(f, norm, c_time, t0, y, *args)
        if start is not None:
            self.seen.add(signature)
            kind = (f"{self.name} {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')} on {y.device}"
                    f"{', with grad' if signature[-1] else ''}")
            _COMPILE_SECONDS[kind] = time.perf_counter() - start
            log.info("compiled the %s step in %.1f s", kind, _COMPILE_SECONDS[kind])
        # Inside the compiled program f does not count its calls (counted() skips while compiling).
        counter.nfe += self.evaluations
        return out

    def _run(self, *args: Any) -> tuple:
        try:
            return self.compiled(*args)
        except torch._dynamo.exc.Unsupported:
            # The adjoint's backward dynamics take a vector-Jacobian product with torch.autograd.grad, which dynamo
            # traces only when asked. Asked here, on a failed trace, rather than on every call: patching the
            # config costs more than a small step.
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return self.compiled(*args)


_STEPS: dict[tuple, CompiledStep] = {}


def compiled_step(tableau: ButcherTableau, ctrl: StepController) -> CompiledStep:
    """The cached :class:`CompiledStep` of ``tableau`` under ``ctrl``'s parameters."""
    key = (tableau.name, type(ctrl).__name__, ctrl.safety, ctrl.ifactor, ctrl.dfactor, ctrl.min_step, ctrl.max_step,
           BACKEND)
    if key not in _STEPS:
        _STEPS[key] = CompiledStep(tableau, ctrl)
    return _STEPS[key]


def takes(method_name: str, options: Mapping[str, Any], callbacks: StepCallbacks | None, event: Any) -> bool:
    """Whether the compiled loop can take this solve; if not, one warning says why (the eager loop takes it)."""
    unsupported = [what for what, present in (("step hooks", callbacks is not None), ("events", event is not None),
                                              ("step_t", options.get("step_t") is not None),
                                              ("jump_t", options.get("jump_t") is not None)) if present]
    if unsupported:
        _warn_once(method_name, "unsupported", f"options['compile'] does not cover {', '.join(unsupported)}: "
                   f"{method_name} takes eager steps for such solves")
    return not unsupported


def solve(method: Any, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *, rtol: Tolerance,
          atol: Tolerance, norm: Norm, options: Mapping[str, Any], counter: Counter, dense: Any,
          time_sign: float = 1.0, land: bool = False) -> torch.Tensor:
    """The adaptive solve of ``method`` (an :class:`~neuralode.solvers.rk.AdaptiveRK`) with compiled steps: the
    eager loop's rules for where each step ends and for the outputs, so that both take the same steps.
    ``dense``: the method's eager stepper, whose dense output gives the states at output times inside a step."""
    tab = method.tableau
    co = tab.tensors(y0.dtype, y0.device)
    n_out = len(t_host)
    blocks = [y0[None]]
    if n_out == 1:
        return blocks[0]
    ctrl = make_controller(options, tab.error_order)
    step = compiled_step(tab, ctrl)
    user_t = lambda s: time_sign * s  # noqa: E731
    budget = StepBudget(options, lambda: f"method {tab.name!r} reached t={user_t(tn_host):.6g} of "
                                         f"[{user_t(t_host[0]):.6g}, {user_t(t_host[-1]):.6g}]")
    c_time = co["c"].to(t.dtype)
    if t.dtype != y0.dtype:
        f_time, f = f, lambda s, y: f_time(s.to(y.dtype), y)
    state_time = (lambda s: s.to(y0.dtype)) if t.dtype != y0.dtype else (lambda s: s)
    may_overshoot = not (land or ctrl.lands_on_last_output)

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
            h = 1e-3 * (t_host[-1] - t_host[0])
    h = min(ctrl.max_step, max(ctrl.min_step, h))
    prev_ratio = torch.ones((), dtype=torch.float64, device=y0.device)

    next_out, bad, target = 1, 0, n_out - 1
    goal_host, goal = t_host[target], t[target]
    while next_out < n_out:
        remaining = goal_host - tn_host
        budget.spend()
        lands = 1.01 * h >= remaining and not may_overshoot
        if lands:
            h_step, h_dev, t_new, t_new_host = remaining, goal - tn, goal, goal_host
        else:
            h_step = remaining / 2 if remaining < 2 * h and not may_overshoot else h
            h_dev = torch.full((), h_step, dtype=t.dtype, device=t.device)
            t_new, t_new_host = tn + h_dev, tn_host + h_step
            if t_new_host == tn_host:
                raise StepUnderflowError(f"step size underflow at t={user_t(tn_host):.6g} (h={h:.3g}); "
                                         "the problem may be stiff or the dynamics non-finite")
        h_host = torch.full((), h_step, dtype=torch.float64, device=y0.device)
        y1, stages, decision, new_prev = step(counter, f, norm, c_time, tn, y, f0, h_dev, h_host, prev_ratio,
                                              rtol, atol)
        ratio, accepted, h_next = decision.tolist()  # the one host sync of this step
        if not accepted:
            counter.rejected += 1
            bad = bad + 1 if not math.isfinite(ratio) else 0
            if bad > _MAX_NONFINITE_REJECTS:
                raise NonFiniteError(
                    f"the ODE function returned non-finite values near t={user_t(tn_host):.6g} and shrinking "
                    f"the step to {h_step:.3g} did not help; check the dynamics for overflow")
            h = h_next
            continue
        counter.accepted += 1
        bad, prev_ratio = 0, new_prev
        f1 = stages[-1] if tab.fsal or tab.reuse_last_stage else f(t_new, y1)
        reached = lands and t_new_host == t_host[target]
        j = next_out
        while j < n_out and (t_host[j] < t_new_host or may_overshoot and t_host[j] == t_new_host):
            j += 1
        if j > next_out:
            budget.output_reached()
            taken = dense.step_type(y1, None, None, y, f0, torch.stack(stages), state_time(h_dev))
            blocks.append(dense.interpolate(taken, f1, t[next_out:j], tn))
        if reached:
            blocks.append(y1[None])
            j = n_out
        next_out = j
        h = max(h_next, h) if lands else h_next
        tn, tn_host, y, f0 = t_new, t_new_host, y1, f1
    counter.next_step = h
    return torch.cat(blocks)
