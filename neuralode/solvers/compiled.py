"""``options['compile']=True``: the attempted step of an embedded explicit RK method as one compiled program.

On cheap dynamics the eager stepper (rk.py) spends most of a step dispatching small operations: the stage
combinations, the error estimate, its norm and the controller's arithmetic. Here one pure tensor function does
all of it (stages, solution, error estimate, error norm, accept/reject and the next step size), with the
tableau's coefficients and the controller's parameters as constants, and ``torch.compile`` traces it, dynamics
included, into one fused program per shape, dtype and grad mode. :class:`CompiledRKStepper` runs it in the one
adaptive loop (adaptive.py), which makes the rest of the decisions (where a step ends, which outputs it covers,
events, hooks, when to give up) from the step's decision, read in one transfer per attempted step: the one sync
the eager stepper has too.

Where ``torch.compile`` cannot be used (no C compiler, a platform it does not support, dynamics it cannot
trace), the same function runs eagerly after one warning. Solves with ``jump_t`` take eager steps: a step ending
on a discontinuity evaluates its last stages just before it, which the compiled step does not.
"""
from __future__ import annotations

import logging
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from neuralode.solvers.adaptive import AdaptiveStepper
from neuralode.solvers.common import Counter, Dynamics
from neuralode.solvers.controller import Decision, PIController, Plan, StepController
from neuralode.solvers.norms import Norm, Tolerance, error_scale
from neuralode.solvers.problem import Problem
from neuralode.solvers.tableaus import ButcherTableau

if TYPE_CHECKING:  # annotations only: rk.py imports this module to choose its stepper
    from neuralode.solvers.rk import ExplicitRKStepper

log = logging.getLogger(__name__)

# torch.compile's backend; tests that check the tracing rather than the generated code use "aot_eager".
BACKEND = "inductor"
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


def takes(method_name: str, options: Mapping[str, Any]) -> bool:
    """Whether compiled steps can take this solve; if not, one warning says why (eager steps take it)."""
    if options.get("jump_t") is not None:
        _warn_once(method_name, "unsupported", f"options['compile'] does not cover jump_t: {method_name} takes "
                   "eager steps for such solves")
        return False
    return True


class CompiledRKStepper(AdaptiveStepper):
    """The steps of an explicit RK method, each attempted and decided on (by the loop's controller's rule) in one
    compiled program; the dense output is the eager stepper's, from the stages the program returns."""

    def __init__(self, eager: ExplicitRKStepper, counter: Counter) -> None:
        self.eager, self.counter, self.error_order = eager, counter, eager.error_order
        self.fused: CompiledStep | None = None  # for the loop's controller, looked up on the first step
        self.prev_ratio: torch.Tensor | None = None  # the PI controller's last accepted error ratio, on the device

    def step_and_decide(self, f: Dynamics, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, plan: Plan,
                        prob: Problem, ctrl: StepController) -> tuple[CompiledRKStep, Decision]:
        if self.fused is None:
            self.fused = compiled_step(self.eager.tableau, ctrl)
            self.prev_ratio = torch.ones((), dtype=torch.float64, device=y0.device)
        # The step as a device tensor (a Python float would be traced as a constant, one program per step size).
        dt = plan.dt if torch.is_tensor(plan.dt) else torch.full((), plan.dt, dtype=t0.dtype, device=t0.device)
        h_host = torch.full((), plan.h, dtype=torch.float64, device=y0.device)
        y1, stages, decision, self.prev_ratio = self.fused(self.counter, f, prob.norm, self.eager.c_time, t0, y0, f0,
                                                           dt, h_host, self.prev_ratio, prob.rtol, prob.atol)
        ratio, accepted, next_step = decision.tolist()  # the one host sync of this step
        step = CompiledRKStep(y1, stages[-1] if self.eager.last_stage_is_f1 else None, y0, f0, stages, dt)
        return step, ctrl.with_status(bool(accepted), next_step, ratio)

    def interpolate(self, step: CompiledRKStep, f1: torch.Tensor, t_out: torch.Tensor,
                    t0: torch.Tensor) -> torch.Tensor:
        dense = self.eager.step_type(step.y1, None, f1, step.y0, step.f0, torch.stack(step.stages),
                                     step.dt.to(step.y0.dtype))
        return self.eager.interpolate(dense, f1, t_out, t0)


class CompiledRKStep(NamedTuple):
    """A compiled step as the loop and the dense output need it; the eager stepper's ``RKStep`` is built only for
    a step that covers an output (most steps cover none)."""

    y1: torch.Tensor
    f1: torch.Tensor | None
    y0: torch.Tensor
    f0: torch.Tensor
    stages: list[torch.Tensor]
    dt: torch.Tensor
