"""Step-size control: Hairer's automatic first step, two controllers chosen by ``options['controller']``, and
the clipping to ``step_t``/``jump_t`` and the last output time that wraps either.

- ``integral`` (the default): torchdiffeq's rule, so that a drop-in call takes torchdiffeq's steps.
- ``pi``: a PI controller that lands on the last output; fewer evaluations on the neural ODEs measured in
  docs/benchmarks.md, which is why the training runner selects it.

A controller works on host floats: the solver fetches the error ratio of each attempted step from
the device once (that single sync decides accept/reject anyway), and the decision (accept or reject, the next
step size, a status) follows from it without touching the device again. A per-sample solve
(:mod:`.per_sample`) decides for every sample at once on the device, by the same rules
(:meth:`StepController.decide_per_sample`).
"""
from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from neuralode.solvers.norms import Norm, Tolerance, error_scale

# Consecutive rejections for non-finite values before giving up (dfactor**40 is far below any useful h).
MAX_NONFINITE_REJECTS = 40


class Status(enum.Enum):
    """How the solve stands after a decision."""

    OK = "ok"
    # The dynamics stayed non-finite while the step shrank by dfactor**MAX_NONFINITE_REJECTS.
    NONFINITE = "non-finite"


class Decision(NamedTuple):
    accept: bool
    next_step: float
    status: Status


@dataclass
class StepController(ABC):
    """What both controllers share: ``h_new = h * factor(r)`` with ``r`` the error ratio (accept r <= 1), an
    accepted step's factor clamped to ``[accepted_floor, ifactor]``, a rejected step's to ``[dfactor, 1]``; a
    zero error grows the step by ``ifactor``, a non-finite one (overflowing dynamics) shrinks it by ``dfactor``;
    the result is kept within ``[min_step, max_step]``."""

    error_order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    min_step: float = 0.0
    max_step: float = math.inf
    nonfinite_rejects: int = field(default=0, init=False)

    @abstractmethod
    def factor(self, ratio: float) -> float:
        """The step's growth factor before clamping."""

    @abstractmethod
    def accepted_floor(self) -> float:
        """The smallest factor of an accepted step."""

    def record(self, ratio: float) -> None:
        """Called with each accepted step's (finite) error ratio."""

    def record_per_sample(self, ratio: torch.Tensor, recorded: torch.Tensor) -> None:
        """:meth:`record` for the samples of a per-sample solve where ``recorded`` (``(B,)`` bool) holds."""

    def next_step(self, h: float, ratio: float, accepted: bool) -> float:
        if not math.isfinite(ratio):
            factor = self.dfactor
        elif ratio == 0.0:
            factor = self.ifactor
        else:
            factor = self.factor(ratio)
            factor = (min(self.ifactor, max(self.accepted_floor(), factor)) if accepted
                      else min(1.0, max(self.dfactor, factor)))
        if accepted and math.isfinite(ratio):
            self.record(ratio)
        return self.clamp(h * factor)

    def decide_per_sample(self, h: torch.Tensor, ratio: torch.Tensor, nonfinite_rejects: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decide` for a batch of independent steps, on the device and without a sync: ``h`` and ``ratio`` in
        time's dtype and the consecutive non-finite rejections so far, each ``(B,)``. Returns whether each step is
        accepted, the next step sizes, and the updated rejection counts (a sample has failed once its count
        exceeds ``MAX_NONFINITE_REJECTS``)."""
        finite = torch.isfinite(ratio)
        accept = ratio <= 1.0
        if self.min_step > 0:
            accept = accept | ((h <= self.min_step) & finite)
        raw = self.factor(ratio)  # inf/nan where ratio is 0 or not finite: replaced below
        factor = torch.where(accept, raw.clamp(self.accepted_floor(), self.ifactor), raw.clamp(self.dfactor, 1.0))
        factor = torch.where(ratio == 0, self.ifactor, torch.where(finite, factor, self.dfactor))
        self.record_per_sample(ratio, accept & finite)
        rejects = torch.where(accept | finite, 0, nonfinite_rejects + 1)
        return accept, (h * factor).clamp(self.min_step, self.max_step), rejects

    def clamp(self, h: float) -> float:
        return min(self.max_step, max(self.min_step, h))

    def decide(self, h: float, ratio: float) -> Decision:
        """Accept a step of size ``h`` whose error ratio is ``ratio`` if ``ratio <= 1``, or if it is finite and the
        step is already at ``min_step`` (rejecting it could only repeat it, as torchdiffeq reasons); the next step
        from :meth:`next_step`; give up once the ratio stayed non-finite for too many rejections in a row."""
        accept = ratio <= 1.0 or (self.min_step > 0 and h <= self.min_step and math.isfinite(ratio))
        return self.with_status(accept, self.next_step(h, ratio, accept), ratio)

    def with_status(self, accept: bool, next_step: float, ratio: float) -> Decision:
        """The decision, made here or by a compiled step (solvers.compiled) under this controller's rule, with its
        status: the solve gives up once the ratio stayed non-finite for too many rejections in a row."""
        self.nonfinite_rejects = 0 if accept or math.isfinite(ratio) else self.nonfinite_rejects + 1
        return Decision(accept, next_step,
                        Status.NONFINITE if self.nonfinite_rejects > MAX_NONFINITE_REJECTS else Status.OK)


@dataclass
class IntegralController(StepController):
    """torchdiffeq's rule: ``factor = safety * r**(-1/k)`` with ``k`` the order of the local error estimate,
    and an accepted step never shrinks. Steps run past the last output, which comes from the dense output,
    as in torchdiffeq."""

    lands_on_last_output = False

    def factor(self, ratio: float) -> float:
        return self.safety * ratio ** (-1.0 / self.error_order)

    def accepted_floor(self) -> float:
        return 1.0


@dataclass
class PIController(StepController):
    """``factor = safety * r**-alpha * r_prev**beta``, ``r_prev`` the last accepted step's error ratio.

    For an error estimate of local order ``k``: ``beta = 0.2 / k`` (Hairer's damping) and
    ``alpha = 1 / k + beta`` (0.24 and 0.04 for dopri5). The ``r_prev`` term damps the step-size
    oscillation of a pure integral controller. ``alpha - beta = 1 / k`` puts the steady state at the same
    error ratio as the integral controller ``safety * r**(-1/k)`` (``r = safety**k``, 0.59 for dopri5)
    rather than Hairer's ``alpha = 1/k - 0.75 beta`` (``r`` = 0.45), which spent ~25% more steps than
    torchdiffeq for errors well below tolerance (docs/benchmarks.md). An accepted step may shrink (down to
    ``dfactor``). The solve lands on the last output time (two equal steps rather than a step and a sliver)
    instead of stepping past it.
    """

    lands_on_last_output = True

    def __post_init__(self) -> None:
        self.beta = 0.2 / self.error_order
        self.alpha = 1.0 / self.error_order + self.beta
        self.prev_ratio = 1.0

    def factor(self, ratio: float) -> float:
        return self.safety * ratio ** -self.alpha * self.prev_ratio ** self.beta

    def accepted_floor(self) -> float:
        return self.dfactor

    def record(self, ratio: float) -> None:
        # Floor so that one exactly-resolved step does not make the next one explode.
        self.prev_ratio = max(ratio, 1e-4)

    def record_per_sample(self, ratio: torch.Tensor, recorded: torch.Tensor) -> None:
        # prev_ratio becomes a (B,) tensor: each sample's own last accepted ratio.
        self.prev_ratio = torch.where(recorded, ratio.clamp_min(1e-4), self.prev_ratio)


def initial_step(f, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, error_order: int,
                 rtol: Tolerance, atol: Tolerance, norm: Norm) -> torch.Tensor:
    """Hairer, Norsett & Wanner (1993), II.4: starting step size from one extra evaluation of ``f``.

    Computed on the device; the caller fetches it together with nothing else (one sync per solve). ``rtol`` and
    ``atol`` are numbers or flat ``(N,)`` per-element tensors like ``y0``.
    """
    scale = error_scale(norm, y0, y0, rtol, atol)
    d0 = norm(y0 / scale)
    d1 = norm(f0 / scale)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(torch.finfo(d1.dtype).tiny))
    y1 = y0 + h0 * f0
    f1 = f(t0 + h0, y1)
    d2 = norm((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                     (0.01 / dmax.clamp_min(torch.finfo(dmax.dtype).tiny)) ** (1.0 / error_order))
    return torch.minimum(100 * h0, h1)


CONTROLLERS: dict[str, type[StepController]] = {"integral": IntegralController, "pi": PIController}


def make_controller(options: Mapping[str, Any], error_order: int) -> StepController:
    """The controller ``options['controller']`` names (default ``integral``; odeint's option check has vetted
    the name) with the options' safety, ifactor, dfactor, min_step and max_step."""
    kind = CONTROLLERS[options.get("controller", "integral")]
    return kind(error_order, float(options.get("safety", 0.9)), float(options.get("ifactor", 10.0)),
                float(options.get("dfactor", 0.2)), float(options.get("min_step", 0.0)),
                float(options.get("max_step", math.inf)))


class Plan(NamedTuple):
    """The step to attempt next: its size ``h`` on the host and ``dt`` as the stepper takes it (the device difference
    ``t1 - t0`` when it ends exactly on a time, so that gradients w.r.t. that time reach the state there)."""

    h: float
    dt: float | torch.Tensor
    t1: torch.Tensor
    t1_host: float
    lands: bool  # ends exactly on a step_t/jump_t time or the last output time
    on_stop: bool  # ... on a step_t/jump_t time
    jump: bool  # ... on a jump_t time: f is discontinuous at t1
    passes: bool  # may step past the last output time (which then comes from the dense output)


class ClipToTimes:
    """``step_t``/``jump_t`` as a controller wrapped around another (which decides accept/reject and the step size):
    a step that would pass the next of those times, or the last output time unless the controller steps past it
    (``may_overshoot``), ends on it instead; within 1% of it the step stretches to reach it, and within two steps it
    takes two equal ones rather than a full step and a sliver (the full one is the likelier to be rejected). Times
    are the solver's (increasing); ``time_sign`` maps the caller's ``step_t``/``jump_t`` onto them."""

    def __init__(self, inner: StepController, options: Mapping[str, Any], t: torch.Tensor, t_host: list[float],
                 time_sign: float, may_overshoot: bool, h: float) -> None:
        self.inner, self.may_overshoot, self.h = inner, may_overshoot, h
        self.stops, self.is_jump, self.stops_dev = _stop_times(options, t_host[0], time_sign, t)
        self.end_host, self.end = t_host[-1], t[-1]
        self.next_stop = 0

    def plan(self, tn: torch.Tensor, tn_host: float) -> Plan:
        on_stop = self.next_stop < len(self.stops) and self.stops[self.next_stop] <= self.end_host
        goal_host, goal = (self.stops[self.next_stop], self.stops_dev[self.next_stop]) if on_stop \
            else (self.end_host, self.end)
        remaining = goal_host - tn_host
        passes = self.may_overshoot and not on_stop
        if 1.01 * self.h >= remaining and not passes:
            jump = on_stop and self.is_jump[self.next_stop]
            return Plan(remaining, goal - tn, goal, goal_host, True, on_stop, jump, passes)
        h = remaining / 2 if remaining < 2 * self.h and not passes else self.h
        return Plan(h, h, tn + h, tn_host + h, False, False, False, passes)

    def follow(self, plan: Plan, decision: Decision) -> None:
        """Move on by the inner controller's decision on the planned step; an accepted step that landed keeps the step
        size proposed before it (landing says nothing bad about the step size) unless the controller proposes a
        larger one."""
        if decision.accept and plan.lands:
            if plan.on_stop:
                self.next_stop += 1
            self.h = max(decision.next_step, self.h)
        else:
            self.h = decision.next_step


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
