"""The one adaptive loop: a method family supplies a stepper (one step and the decision on it, and the interpolant
inside a step); the loop asks the controller where each step ends, has the stepper attempt it and decide by the
controller's rule, and on acceptance saves the outputs the step passed (from its interpolant), watches for an
event and starts after a ``jump_t`` discontinuity. The step budget, the user's step hooks and the recovery from
non-finite values (a rejected step shrinks by ``dfactor``) are the loop's too.

An embedded method's stepper (:class:`EmbeddedStepper`) returns its error ratio and the controller decides on the
host; a compiled step (solvers.compiled) makes the same decision inside its program.

Host synchronisation: exactly one read per attempted step, the error ratio (or the compiled step's decision) that
decides accept/reject; step sizes and times are tracked on the host. Solving until an event adds one read per
accepted step: the event's sign.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from neuralode.solvers.common import Counter, Dynamics, StepBudget, StepCallbacks, nudged
from neuralode.solvers.controller import ClipToTimes, Decision, Plan, Status, StepController, initial_step, make_controller
from neuralode.solvers.errors import NonFiniteError, StepUnderflowError
from neuralode.solvers.events import EventWatch
from neuralode.solvers.norms import Norm, Tolerance
from neuralode.solvers.problem import Problem


class AdaptiveStepper(ABC):
    """What the loop drives: a planned step attempted and decided on (``step_and_decide``), and the dense output
    inside an accepted step (``interpolate``)."""

    error_order: int

    @abstractmethod
    def step_and_decide(self, f: Dynamics, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, plan: Plan,
                        prob: Problem, ctrl: StepController) -> tuple[Any, Decision]:
        """The attempted step (with ``y1``, and ``f1``: ``f(t1, y1)`` where the step has it for free, else None) and
        the decision on it by ``ctrl``'s rule."""

    @abstractmethod
    def interpolate(self, step: Any, f1: torch.Tensor, t_out: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        """The states at the times ``t_out`` inside the step from ``t0``, shape ``(len(t_out), N)``."""


class EmbeddedStepper(AdaptiveStepper):
    """One step of an embedded method, ``(f, t0, y0, f0, dt) -> (y1, y_err, f1, dense)`` (``step``), and the error
    ratio of that step (``error_ratio``), which the controller reads on the host to decide. ``dense`` is what the
    interpolant needs."""

    @abstractmethod
    def step(self, f: Dynamics, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, dt: float | torch.Tensor,
             jump_at: torch.Tensor | None = None) -> Any:
        """``jump_at``: the step ends on a discontinuity of ``f`` there; stages at its end see ``f`` before it."""

    @abstractmethod
    def error_ratio(self, y0: torch.Tensor, step: Any, rtol: Tolerance, atol: Tolerance,
                    norm: Norm) -> torch.Tensor:
        """The step's scaled error (accept at <= 1), a device scalar; called without autograd."""

    def step_and_decide(self, f: Dynamics, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, plan: Plan,
                        prob: Problem, ctrl: StepController) -> tuple[Any, Decision]:
        step = self.step(f, t0, y0, f0, plan.dt, plan.t1 if plan.jump else None)
        with torch.no_grad():  # step control is not differentiated
            ratio = float(self.error_ratio(y0, step, prob.rtol, prob.atol, prob.norm))
        return step, ctrl.decide(plan.h, ratio)


def solve_adaptive(stepper: AdaptiveStepper, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter, *,
                   callbacks: StepCallbacks | None = None, event: EventWatch | None = None,
                   land: bool = False) -> torch.Tensor:
    """The states at ``prob.t`` (increasing), ``(len(t), N)``; with ``event``, the states at ``[t0, event time]``,
    stepping with no end until the event's sign changes. ``land``: end exactly on the last output time whatever
    the controller (the adjoint's intervals: the next one starts there)."""
    if event is not None:
        prob = prob.replace(t=torch.cat([prob.t[:1], prob.t.new_full((1,), math.inf)]),
                            t_host=[prob.t_host[0], math.inf])
    if prob.t.dtype != y0.dtype:  # time held in a wider dtype (options['dtype']); f always sees the state's
        f_time, f = f, lambda s, y: f_time(s.to(y.dtype), y)
    run = _AdaptiveRun(stepper, prob, f, y0, counter, callbacks, event, land)
    while run.next_out < len(prob.t_host) and not run.attempt():
        pass
    counter.next_step = run.ctrl.h
    if event is not None:
        return torch.stack([y0, event.state])
    return torch.cat(run.blocks)


class _AdaptiveRun:
    """The state of one adaptive solve between attempted steps."""

    def __init__(self, stepper: AdaptiveStepper, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter,
                 callbacks: StepCallbacks | None, event: EventWatch | None, land: bool) -> None:
        self.stepper, self.prob, self.f, self.counter, self.event = stepper, prob, f, counter, event
        self.blocks = [y0[None]]
        self.hooks = (callbacks.step, callbacks.accept, callbacks.reject) if callbacks else (None, None, None)
        inner = make_controller(prob.options, stepper.error_order)
        # No cap unless asked (torchdiffeq has none either); the training runner sets one per solve.
        self.budget = StepBudget(prob.options, self.where)
        self.tn, self.tn_host, self.y = prob.t[0], prob.t_host[0], y0
        self.f0 = f(self.tn, y0)
        # The integral controller steps past the last output (torchdiffeq's steps); stops and events land.
        may_overshoot = not (land or inner.lands_on_last_output or event is not None)
        self.ctrl = ClipToTimes(inner, prob.options, prob.t, prob.t_host, prob.time_sign, may_overshoot,
                                inner.clamp(self.first_step()))
        self.next_out = 1  # outputs before the last come from the dense output, not from steps landing on them

    def user_time(self, s: float) -> float:
        """A time of the solver as the caller gave it (messages quote the caller's times)."""
        return self.prob.time_sign * s

    def where(self) -> str:
        t_host = self.prob.t_host
        return (f"method {self.prob.solver.name!r} reached t={self.user_time(self.tn_host):.6g} of "
                f"[{self.user_time(t_host[0]):.6g}, {self.user_time(t_host[-1]):.6g}]")

    def first_step(self) -> float:
        """``options['first_step']``, else Hairer's estimate (one evaluation of ``f``)."""
        prob = self.prob
        if prob.options.get("first_step") is not None:
            return float(prob.options["first_step"])
        with torch.no_grad():
            h = float(initial_step(self.f, self.tn.detach(), self.y.detach(), self.f0.detach(),
                                   self.stepper.error_order, prob.rtol, prob.atol, prob.norm))
        if math.isfinite(h):
            return h
        if not bool(torch.isfinite(self.f0).all()):
            raise NonFiniteError(f"the ODE function returned non-finite values at t={self.user_time(self.tn_host):.6g}"
                                 " (initial state); check the dynamics and y0")
        # Only the probe step beyond t0 overflowed: start small and let rejection shrink further.
        span = prob.t_host[-1] - prob.t_host[0]  # infinite for an event solve
        return 1e-3 * (span if math.isfinite(span) else 1.0)

    def attempt(self) -> bool:
        """Attempt one step; True once the event has ended the solve."""
        self.budget.spend()
        plan = self.ctrl.plan(self.tn, self.tn_host)
        if plan.t1_host == self.tn_host:
            raise StepUnderflowError(f"step size underflow at t={self.user_time(self.tn_host):.6g} (h={self.ctrl.h:.3g}); "
                                     "the problem may be stiff or the dynamics non-finite")
        on_step, on_accept, on_reject = self.hooks
        if on_step is not None:
            on_step(self.tn, self.y, _step_tensor(plan.dt, self.tn))
        step, decision = self.stepper.step_and_decide(self.f, self.tn, self.y, self.f0, plan, self.prob, self.ctrl.inner)
        self.ctrl.follow(plan, decision)
        if not decision.accept:
            if on_reject is not None:
                on_reject(self.tn, self.y, _step_tensor(plan.dt, self.tn))
            self.counter.rejected += 1
            if decision.status is Status.NONFINITE:
                raise NonFiniteError(f"the ODE function returned non-finite values near t="
                                     f"{self.user_time(self.tn_host):.6g} and shrinking the step to {plan.h:.3g} did "
                                     "not help; check the dynamics for overflow")
            return False
        if on_accept is not None:
            on_accept(self.tn, self.y, _step_tensor(plan.dt, self.tn))
        self.counter.accepted += 1
        return self.accepted(plan, step)

    def accepted(self, plan: Plan, step: Any) -> bool:
        """Save the outputs the accepted step passed and move to its end; True if the event crossed inside it."""
        f1 = step.f1 if step.f1 is not None else self.f(plan.t1, step.y1)
        if self.event is not None and self.event.crossed(plan.t1, step.y1):
            t0, stepper = self.tn, self.stepper
            self.event.locate(lambda s: stepper.interpolate(step, f1, s[None], t0)[0], t0, plan.t1, plan.h,
                              self.prob.atol)
            return True
        t, t_host = self.prob.t, self.prob.t_host
        j = self.next_out
        while j < len(t_host) and (t_host[j] < plan.t1_host or plan.passes and t_host[j] == plan.t1_host):
            j += 1
        if j > self.next_out:
            self.budget.output_reached()
            self.blocks.append(self.stepper.interpolate(step, f1, t[self.next_out:j], self.tn))
        if plan.lands and plan.t1_host == t_host[-1]:  # the final output time itself: the step's end point exactly
            self.blocks.append(step.y1[None])
            j = len(t_host)
        self.next_out = j
        if plan.jump:  # the next step starts just after the discontinuity
            f1 = self.f(nudged(plan.t1, 1.0), step.y1)
        self.tn, self.tn_host, self.y, self.f0 = plan.t1, plan.t1_host, step.y1, f1
        return False


def _step_tensor(h: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return h if torch.is_tensor(h) else torch.tensor(h, dtype=like.dtype, device=like.device)
