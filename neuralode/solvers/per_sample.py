"""Per-sample solves (``odeint(..., options=dict(per_sample=True))``): every sample of a batch (the first dimension
of ``y0``) gets its own output times, step size, accept/reject decision, error norm (over the sample's own
elements) and status, all in one batched loop.

Each attempted step is taken by the whole batch at once with the explicit RK stepper of :mod:`.rk` (its step a
``(B, 1)`` tensor), and the controller of :mod:`.controller` decides for every sample on the device
(:meth:`~neuralode.solvers.controller.StepController.decide_per_sample`). A sample follows the rules of the joint
loop (:mod:`.adaptive`), so that it takes the steps it would take if solved alone: the same first step, the same
landing on its last output time, outputs from the dense output. A finished sample is frozen: it takes steps of
size 0 (``func`` still sees it, at its final time and state) and its results no longer change. The fixed-grid
explicit methods step on each sample's own ``t`` row (:func:`march_per_sample`).

Host synchronisation: one read per attempted step, of a few flags (any sample still running, any failed, whether
all samples share the step's times, and the window of output times the step can pass, so that the dense output
is evaluated there only); nothing is read per sample.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuralode.solvers.arguments import (
    CALLBACK_NAMES,
    ToleranceArg,
    check_not_both_zero,
    check_options,
    check_tolerance,
    solve_time_dtype,
)
from neuralode.solvers.common import Counter, hermite, warn_caller
from neuralode.solvers.controller import MAX_NONFINITE_REJECTS, initial_step, make_controller
from neuralode.solvers.errors import MaxNumStepsError, NonFiniteError, StepUnderflowError, UnsupportedError
from neuralode.solvers.norms import Norm, Tolerance
from neuralode.solvers.problem import Method
from neuralode.solvers.rk import AdaptiveRK, ExplicitRKStepper, FixedGridRK, RKStep, combine, stage_derivatives
from neuralode.solvers.stats import SampleCounts
from neuralode.solvers.structure import StateStructure

# The options of an adaptive method that per-sample solves take; options['per_sample'] itself aside.
PER_SAMPLE_OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "min_step", "max_step", "max_num_steps",
                      "max_steps_per_solve", "controller", "dtype")
SUPPORTED = ("per_sample=True supports the explicit adaptive Runge-Kutta methods (dopri5, bosh3, adaptive_heun, "
             "fehlberg2, dopri8, tsit5, ...) and the fixed-grid ones on each sample's t (euler, midpoint, rk4, ...), "
             "on a real tensor y0 of shape (B, ...)")


def row_rms(x: torch.Tensor) -> torch.Tensor:
    """The RMS norm of each sample (row) of a ``(B, M)`` tensor, shape ``(B, 1)``: the joint solve's default norm,
    per sample."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True) / (x.shape[-1] ** 0.5)


@dataclass
class SampleProblem:
    """A validated per-sample solve of a ``(B, M)`` state. ``t``: ``(B, T)`` in the solver's time ``s = sign * t``
    (each row increasing), in time's dtype; ``sign``: +1 or -1 for a batch whose rows all run one way, else a
    ``(B,)`` tensor; ``rtol``/``atol``: numbers or ``(B, M)`` tensors; ``norm``: ``(B, M) -> (B, 1)``."""

    method: AdaptiveRK
    t: torch.Tensor
    sign: float | torch.Tensor
    rtol: Tolerance
    atol: Tolerance
    options: dict[str, Any]
    norm: Norm = row_rms
    first_step: torch.Tensor | None = None  # each sample's first step (else options['first_step'] or estimated)

    def replace(self, **changes: Any) -> SampleProblem:
        return dataclasses.replace(self, **changes)


def split_per_sample(options: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, bool]:
    """``options`` without ``per_sample``, and whether it asked for a per-sample solve."""
    if options is None or "per_sample" not in options:
        return options, False
    flag = options["per_sample"]
    if not isinstance(flag, bool):
        raise ValueError(f"options['per_sample'] must be True or False, got {flag!r}")
    return {k: v for k, v in options.items() if k != "per_sample"}, flag


def check_method(method: Method, options: Mapping[str, Any] | None, event_fn: Callable | None,
                 adaptive_only: bool = False) -> None:
    """Refuse what a per-sample solve cannot do, naming what it can."""
    if not isinstance(method, AdaptiveRK) and (adaptive_only or not isinstance(method, FixedGridRK)):
        supported = "the explicit adaptive Runge-Kutta methods" if adaptive_only else SUPPORTED
        raise UnsupportedError(f"{supported}; got method {method.name!r}")
    if event_fn is not None:
        raise UnsupportedError(f"{SUPPORTED}, without event_fn; solve with per_sample=False to stop at an event")
    supported = PER_SAMPLE_OPTIONS if isinstance(method, AdaptiveRK) else ()
    refused = [key for key in (options or {}) if key not in supported]
    if refused:
        raise UnsupportedError(f"{SUPPORTED}; options {', '.join(map(repr, refused))} are not supported with it "
                               f"for method {method.name!r} (supported: {', '.join(supported) or 'none'})")


def sample_times(t: Any, batch: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, list[list[float]]]:
    """``t`` (``(T,)`` shared or ``(B, T)``) as ``(B, T)`` on ``device`` in time's ``dtype``, checked, with its host
    copy (one sync per solve)."""
    if not torch.is_tensor(t) or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be a real tensor of output times, got {t.dtype if torch.is_tensor(t) else type(t).__name__}")
    if t.ndim not in (1, 2) or t.shape[-1] == 0 or (t.ndim == 2 and t.shape[0] != batch):
        raise ValueError(f"with per_sample=True, t must have shape (T,) or (B, T) with B={batch} (the first dimension "
                         f"of y0), got {tuple(t.shape)}")
    t = t.to(device=device, dtype=dtype).expand(batch, t.shape[-1])
    t_host = t.detach().cpu().tolist()
    for b, row in enumerate(t_host):
        if not all(math.isfinite(x) for x in row):
            raise ValueError(f"t must be finite, got {row} for sample {b}")
        steps = [row[i] - row[i - 1] for i in range(1, len(row))]
        if steps and not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
            raise ValueError(f"each row of t must be strictly increasing or strictly decreasing; sample {b} has {row}")
    return t, t_host


def orientation(t: torch.Tensor, t_host: list[list[float]]) -> tuple[torch.Tensor, float | torch.Tensor]:
    """The solver's increasing times ``s = sign * t`` and the sign (a number where every row runs one way)."""
    signs = [1.0 if len(row) == 1 or row[-1] > row[0] else -1.0 for row in t_host]
    if len(set(signs)) == 1:
        return signs[0] * t, signs[0]
    sign = torch.tensor(signs, dtype=t.dtype, device=t.device)
    return sign[:, None] * t, sign


def build_sample_problem(y0: torch.Tensor, t: Any, rtol: ToleranceArg, atol: ToleranceArg, method: Method,
                         options: Mapping[str, Any] | None) -> SampleProblem:
    """Validate a per-sample solve (``options`` without ``per_sample``)."""
    if not torch.is_tensor(y0) or y0.is_complex() or y0.ndim == 0:
        got = f"shape {tuple(y0.shape)}, {y0.dtype}" if torch.is_tensor(y0) else type(y0).__name__
        raise UnsupportedError(f"{SUPPORTED}; got y0 of {got}")
    structure = StateStructure(y0)
    batch = y0.shape[0]
    tols = [check_tolerance(name, value, structure) for name, value in (("rtol", rtol), ("atol", atol))]
    check_not_both_zero("", method, *tols)
    rtol, atol = (tol.view(batch, -1) if torch.is_tensor(tol) else tol for tol in tols)
    opts = check_options(method, options)
    t, t_host = sample_times(t, batch, solve_time_dtype(method, opts, y0.dtype), y0.device)
    if not method.adaptive:  # steps on each sample's t as it is, forwards or backwards
        return SampleProblem(method, t, 1.0, rtol, atol, opts)
    s, sign = orientation(t, t_host)
    return SampleProblem(method, s, sign, rtol, atol, opts)


class SampleDynamics:
    """The user's ``func`` on the ``(B, M)`` state in the solver's time, counting its calls. ``func`` gets the
    caller's times as a ``(B,)`` tensor in the state's dtype, or as a 0-d tensor while every sample is at the same
    time and ``t`` needs no gradient (``shared``, set by the loop before each step)."""

    def __init__(self, func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: torch.Size,
                 sign: float | torch.Tensor, counter: Counter) -> None:
        self.func, self.shape, self.counter = func, shape, counter
        self.sign = sign if isinstance(sign, float) else sign[:, None]
        self.forward_only = isinstance(sign, float) and sign == 1.0  # no sign to apply
        self.shared = False

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.counter.nfe += 1
        s = s.reshape(-1)
        t = (s if self.forward_only else (self.sign * s[:, None]).reshape(-1)).to(y.dtype)
        dy = self.func(t[0] if self.shared else t, y.reshape(self.shape))
        if not torch.is_tensor(dy) or dy.shape != self.shape:
            got = tuple(dy.shape) if torch.is_tensor(dy) else type(dy).__name__
            raise ValueError(f"func(t, y) returned {got} but the state has shape {tuple(self.shape)}")
        dy = dy.reshape(y.shape)
        return dy if self.forward_only else self.sign * dy


def march_per_sample(prob: SampleProblem, f: SampleDynamics, y0: torch.Tensor, counter: Counter
                     ) -> tuple[torch.Tensor, SampleCounts]:
    """A fixed-grid method's steps on each sample's own ``t`` (``(B, T)``), all samples at once: ``(T, B, M)``."""
    tensors = prob.method.tableau.tensors(y0.dtype, y0.device)
    c, t = tensors["c"].view(-1, 1, 1), prob.t
    # While every sample steps on the same times and they need no gradient, func gets them as one 0-d time.
    f.shared = not t.requires_grad and bool((t == t[:1]).all())
    states = [y0]
    for k in range(t.shape[1] - 1):
        t0, dt = t[:, k, None], (t[:, k + 1] - t[:, k])[:, None]
        stages = stage_derivatives(tensors["a_rows"], f, t0 + c * dt, states[-1], dt, f(t0, states[-1]))
        states.append(states[-1] + dt * combine(tensors["b"], stages))
    counter.accepted += len(y0) * (t.shape[1] - 1)
    steps = torch.full((len(y0),), t.shape[1] - 1, dtype=torch.long, device=y0.device)
    return torch.stack(states), SampleCounts(torch.full_like(steps, counter.nfe), steps, torch.zeros_like(steps))


def solve_per_sample(prob: SampleProblem, f: SampleDynamics, y0: torch.Tensor, counter: Counter,
                     land: bool = False) -> tuple[torch.Tensor, SampleCounts]:
    """The states at every sample's output times, ``(T, B, M)``, and each sample's work. ``land``: every sample
    ends exactly on its last output time (the adjoint's intervals), whatever the controller."""
    if prob.t.shape[1] == 1:
        zeros = torch.zeros(y0.shape[0], dtype=torch.long, device=y0.device)
        return y0[None], SampleCounts(zeros, zeros, zeros)
    run = _SampleRun(prob, f, y0, counter, land)
    while run.attempt():
        pass
    # The totals sum the samples' steps (one sync per solve).
    accepted, rejected = torch.stack([run.accepted.sum(), run.rejected.sum()]).tolist()
    counter.accepted += accepted
    counter.rejected += rejected
    counter.next_step = run.h
    return run.out, SampleCounts(run.nfe, run.accepted, run.rejected)


class _SampleRun:
    """The state of one per-sample solve between attempted steps: ``(B,)`` device tensors throughout."""

    def __init__(self, prob: SampleProblem, f: SampleDynamics, y0: torch.Tensor, counter: Counter,
                 land: bool) -> None:
        self.prob, self.f, self.counter = prob, f, counter
        nfe_before = counter.nfe
        self.stepper = ExplicitRKStepper(prob.method.tableau, y0.dtype, y0.device, prob.t.dtype)
        self.ctrl = make_controller(prob.options, self.stepper.error_order)
        # As in the joint loop: the integral controller steps past the last output, the PI controller lands on it.
        self.passes = not (land or self.ctrl.lands_on_last_output)
        self.t_out, self.end, self.tn = prob.t.T, prob.t[:, -1], prob.t[:, 0]
        self.y, self.out = y0, y0.expand(prob.t.shape[1], *y0.shape)
        self.index = torch.arange(prob.t.shape[1], device=y0.device)[:, None]
        self.window = (0, prob.t.shape[1])  # the output indices the next step can pass (set by flags)
        # One time for the batch where each sample's time is that time: not where the samples' times carry gradients
        # of their own (a (B, T) t), which the first sample's would take.
        self.may_share = prob.t.shape[0] == 1 or (isinstance(prob.sign, float) and not prob.t.requires_grad)
        f.shared = self.may_share and bool((self.tn == self.tn[0]).all())
        self.f0 = f(self.tn[:, None], y0)
        f.shared = False
        zeros = torch.zeros(y0.shape[0], dtype=torch.long, device=y0.device)
        self.next_out = zeros + 1
        self.accepted, self.rejected = zeros.clone(), zeros.clone()
        self.interval, self.attempted, self.nonfinite = zeros.clone(), zeros.clone(), zeros.clone()
        self.active = torch.ones_like(zeros, dtype=torch.bool)
        self.h = self.first_step().clamp(self.ctrl.min_step, self.ctrl.max_step)
        self.nfe = zeros + (counter.nfe - nfe_before)  # f(t0) and the first step's estimate: every sample's

    def first_step(self) -> torch.Tensor:
        """``first_step``, else ``options['first_step']``, else each sample's own estimate as the joint loop makes
        it."""
        prob = self.prob
        if prob.first_step is not None:
            return prob.first_step
        if prob.options.get("first_step") is not None:
            return torch.full_like(self.tn, float(prob.options["first_step"])).detach()
        with torch.no_grad():
            h = initial_step(self.f, self.tn[:, None].detach(), self.y.detach(), self.f0.detach(),
                             self.stepper.error_order, prob.rtol, prob.atol, prob.norm).reshape(-1).to(self.tn.dtype)
            bad = ~torch.isfinite(h)
            if bool(bad.any()):
                if not bool(torch.isfinite(self.f0).all()):
                    raise NonFiniteError(f"the ODE function returned non-finite values at the initial state of sample "
                                         f"{self.first(~torch.isfinite(self.f0).all(-1))}; check the dynamics and y0")
                h = torch.where(bad, 1e-3 * (self.end - self.tn), h)
        return h

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each sample's next step ``dt`` (0 for a finished one), its end ``t1`` and whether it lands on the sample's
        last output time: the joint loop's clipping (:class:`~neuralode.solvers.controller.ClipToTimes`), per
        sample."""
        remaining = self.end - self.tn
        if self.passes:
            lands, dt = torch.zeros_like(self.active), self.h
        else:
            rest = remaining.detach()
            lands = (1.01 * self.h >= rest) & self.active
            # Only a landing step carries the gradient of the end time, as in the joint loop.
            dt = torch.where(lands, remaining, torch.where(rest < 2 * self.h, rest / 2, self.h))
        dt = torch.where(self.active, dt, 0.0)
        return dt, torch.where(lands, self.end, self.tn + dt), lands

    def flags(self, dt: torch.Tensor, t1: torch.Tensor) -> tuple[bool, bool]:
        """The one host read of an attempted step: whether any sample still runs and whether all share the step's
        times; raises if a sample exceeded its step cap, failed on non-finite values or underflowed."""
        options = self.prob.options
        over = (self.interval > (options.get("max_num_steps") or math.inf)) | \
            (self.attempted > (options.get("max_steps_per_solve") or math.inf))
        shared = (self.tn == self.tn[0]).all() & (dt == dt[0]).all() & self.may_share
        # The outputs this step can pass lie in [first unsaved output, last output at or before the furthest t1):
        # read with the flags, so that the dense output is evaluated on that window only.
        count = self.t_out.shape[0]
        first_unsaved = torch.where(self.active, self.next_out, count).min()
        past_end = ((self.t_out <= t1) & self.active).sum(0).max()
        flags = torch.stack([self.active.any(), (over & self.active).any(), (self.nonfinite > MAX_NONFINITE_REJECTS).any(),
                             (self.active & (t1 == self.tn)).any(), shared, first_unsaved, past_end]).tolist()
        running, over_cap, failed, underflow, same = map(bool, flags[:5])
        lo, hi = flags[5:]
        self.window = (lo, max(lo, hi))
        if over_cap:
            self.refuse_steps(over & self.active)
        if failed:
            raise NonFiniteError(f"the ODE function returned non-finite values for sample "
                                 f"{self.first(self.nonfinite > MAX_NONFINITE_REJECTS)} and shrinking its step did not "
                                 "help; check the dynamics for overflow")
        if underflow:
            b = self.first(self.active & (t1 == self.tn))
            raise StepUnderflowError(f"step size underflow for sample {b} at t={self.user_time(b):.6g}; the problem "
                                     "may be stiff or the dynamics non-finite")
        return running, same

    def attempt(self) -> bool:
        """Attempt one step for every running sample; False once all have finished."""
        self.interval += self.active
        self.attempted += self.active
        dt, t1, lands = self.plan()
        running, self.f.shared = self.flags(dt, t1)
        if not running:
            return False
        nfe = self.counter.nfe
        step = self.stepper.step(self.f, self.tn[:, None], self.y, self.f0, dt[:, None])
        prob = self.prob
        with torch.no_grad():  # step control is not differentiated
            ratio = self.stepper.error_ratio(self.y, step, prob.rtol, prob.atol, prob.norm).reshape(-1)
            accept, h_next, self.nonfinite = self.ctrl.decide_per_sample(dt.detach(), ratio.to(dt.dtype),
                                                                         self.nonfinite)
        taken = accept & self.active
        f1 = step.f1 if step.f1 is not None else self.f(t1[:, None], step.y1)
        self.save_outputs(step, f1, t1, taken, lands & taken)
        self.y = torch.where(taken[:, None], step.y1, self.y)
        self.f0 = torch.where(taken[:, None], f1, self.f0)
        self.tn = torch.where(taken, t1, self.tn)
        # A step that landed keeps the step size proposed before it unless the controller proposes a larger one.
        h_next = torch.where(lands & taken, torch.maximum(h_next, self.h), h_next)
        self.h = torch.where(self.active, h_next, self.h)
        self.accepted += taken
        self.rejected += self.active & ~accept
        self.nfe += self.active * (self.counter.nfe - nfe)
        self.active = self.next_out < self.t_out.shape[0]
        return True

    def save_outputs(self, step: RKStep, f1: torch.Tensor, t1: torch.Tensor, taken: torch.Tensor,
                     landed: torch.Tensor) -> None:
        """Write the outputs each accepted step passed (from its dense output) and, where it landed on the last
        output time, that output (the step's end point exactly)."""
        lo, hi = self.window
        t_out = self.t_out[lo:hi]
        passed = (self.index[lo:hi] >= self.next_out) & ((t_out < t1) | (self.passes & (t_out == t1))) & taken
        out = self.out
        if hi > lo:
            window = torch.where(passed[..., None], self.interpolate(step, f1, t_out), out[lo:hi])
            out = torch.cat([out[:lo], window, out[hi:]])
        last = (self.index == self.t_out.shape[0] - 1) & landed
        self.out = torch.where(last[..., None], step.y1, out)
        reached = passed.sum(0)
        self.next_out = self.next_out + reached + landed
        self.interval = torch.where(reached > 0, 0, self.interval)  # max_num_steps counts per output interval

    def interpolate(self, step: RKStep, f1: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
        """The step's dense output at the output times ``t_out`` ``(W, B)``, ``(W, B, M)``; only the times inside the
        step are used. ``theta`` is clipped to the step so that the unused ones stay finite (their gradient is zero,
        not nan)."""
        h = torch.where(step.h == 0, 1.0, step.h)  # a finished sample's zero step
        theta = ((t_out - self.tn).to(h.dtype) / h[:, 0]).clamp(0.0, 1.0)
        stepper = self.stepper
        if stepper.tableau.interpolation != "polynomial":
            return hermite(theta, step.h, step.y0, step.y1, step.f0, f1)
        powers = torch.stack([theta ** (j + 1) for j in range(stepper.dense.shape[1])], dim=-1)  # (T, B, degree)
        k = torch.cat([step.k, f1[None]]) if stepper.dense.shape[0] > step.k.shape[0] else step.k
        weights = powers @ stepper.dense.T  # (T, B, stages): one batched product per sample below
        return step.y0 + step.h * torch.bmm(weights.transpose(0, 1), k.transpose(0, 1)).transpose(0, 1)

    def first(self, mask: torch.Tensor) -> int:
        """The first sample where ``mask`` holds (an error path: a sync is fine)."""
        return int(mask.nonzero()[0, 0])

    def user_time(self, b: int) -> float:
        sign = self.prob.sign if isinstance(self.prob.sign, float) else float(self.prob.sign[b])
        return sign * float(self.tn[b])

    def refuse_steps(self, over: torch.Tensor) -> None:
        b = self.first(over)
        option = "max_num_steps" if bool(self.interval[b] > (self.prob.options.get("max_num_steps") or math.inf)) \
            else "max_steps_per_solve"
        raise MaxNumStepsError(f"{option}={self.prob.options[option]} exceeded by sample {b} at "
                               f"t={self.user_time(b):.6g}; loosen rtol/atol or raise options[{option!r}]",
                               option=option)


def odeint_per_sample(func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor, t: torch.Tensor,
                      rtol: ToleranceArg, atol: ToleranceArg, method: Method, options: Mapping[str, Any] | None
                      ) -> tuple[torch.Tensor, Counter, SampleCounts]:
    """:func:`~neuralode.solvers.odeint.odeint` with ``per_sample=True`` (``options`` without it): the states
    ``(T, *y0.shape)``, the batch-wide counts and each sample's."""
    prob = build_sample_problem(y0, t, rtol, atol, method, options)
    hooks = [name for name in CALLBACK_NAMES if getattr(func, name, None) is not None]
    if hooks:
        warn_caller(f"per_sample=True does not call {', '.join(hooks)} (ignored)")
    counter = Counter()
    f = SampleDynamics(func, y0.shape, prob.sign, counter)
    solve = solve_per_sample if method.adaptive else march_per_sample
    ys, counts = solve(prob, f, y0.reshape(y0.shape[0], -1), counter)
    return ys.reshape(ys.shape[:1] + y0.shape), counter, counts

