"""Public ``odeint`` and ``odeint_event``: the validated :class:`~neuralode.solvers.problem.Problem` solved, with
statistics.

Call-compatible with ``torchdiffeq.odeint`` (0.2.5) for the shared subset of arguments, plus a
keyword-only ``stats`` the solver adds its work counts into.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from neuralode.solvers.arguments import (
    ToleranceArg,
    build_problem,
    check_options,
    check_tolerance,
    counted,
    step_callbacks,
    supported_callbacks,
)
from neuralode.solvers.common import Counter
from neuralode.solvers.events import EventFn, EventTimeGradient, first_crossing
from neuralode.solvers.per_sample import check_method, odeint_per_sample, split_per_sample
from neuralode.solvers.problem import Problem
from neuralode.solvers.registry import resolve_method
from neuralode.solvers.stats import SolveStats
from neuralode.solvers.structure import State, StateStructure

# Re-exported: code written against this module finds them here.
__all__ = ["Problem", "State", "StateStructure", "ToleranceArg", "check_options", "check_tolerance", "odeint",
           "odeint_event"]


def odeint(func: Callable[[torch.Tensor, State], State], y0: State, t: torch.Tensor, rtol: ToleranceArg = 1e-7,
           atol: ToleranceArg = 1e-9, method: str | None = None, options: Mapping[str, Any] | None = None, *,
           event_fn: Callable[[torch.Tensor, State], torch.Tensor] | None = None,
           stats: SolveStats | None = None) -> State | tuple[torch.Tensor, State]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``; returns the states at ``t``, shape ``(len(t), *y0.shape)``
    (a tuple of such for a tuple ``y0``). Gradients flow by backpropagation through the solver's steps.
    ``y0`` may be real or complex, and the parts of a tuple may differ in dtype; each output keeps its part's dtype.

    ``rtol``/``atol``: numbers, or per-element tolerances (a tensor broadcasting against ``y0``; for a tuple
    ``y0`` one number or tensor per part). ``method``: one of :data:`SOLVERS` (default ``dopri5``).
    ``options``: fixed-step methods take ``step_size`` (default: step on the grid ``t``); adaptive ones
    ``first_step``, ``safety``, ``ifactor``, ``dfactor``, ``min_step``, ``max_step``, ``max_num_steps``
    (default: no cap, as torchdiffeq; the training runner sets 10000) and ``norm`` (a callable on the state);
    an unknown key is ignored with a warning.
    As in torchdiffeq, fixed-step methods also take ``grid_constructor`` (``(func, y0, t) -> grid``, on the
    flat state), ``interp`` (``'linear'`` or ``'cubic'``) and ``perturb``; adaptive ones ``step_t`` (times to
    step onto), ``jump_t`` (discontinuities of ``func``: stepped onto, ``func`` re-evaluated just after) and
    ``dtype`` (a wider dtype for time; default: the state's). ``func.callback_step``/``callback_accept_step``/
    ``callback_reject_step(t0, y0, dt)`` are called around each step when ``func`` defines them.

    ``event_fn(t, y)``: a tensor whose first zero crossing (any entry) ends the solve; ``t`` must then be
    ``[t0, t1]`` (only its direction counts) and the result is ``(event_t, states at [t0, event_t])``;
    gradients reach the states with ``event_t`` held fixed (:func:`~neuralode.solvers.events.odeint_event`
    adds the event time's own dependence). ``stats``: NFE and accepted/rejected steps are added into it.

    ``options['per_sample']=True`` solves every sample (the first dimension of a tensor ``y0``) on its own steps,
    with ``t`` of shape ``(T,)`` or ``(B, T)``: see :mod:`neuralode.solvers.per_sample`.
    """
    options, per_sample = split_per_sample(options)
    if per_sample:
        solver = resolve_method(method)
        check_method(solver, options, event_fn)
        ys, counter, counts = odeint_per_sample(func, y0, t, rtol, atol, solver, options)
        if stats is not None:
            stats.record(counter.nfe, counter.accepted, counter.rejected, "forward", counts)
        return ys
    prob = build_problem(y0, t, rtol, atol, resolve_method(method), options)
    counter = Counter()
    structure = prob.structure
    f = counted(func, structure, counter)
    flat_y0 = structure.flatten(y0, what="y0")
    callbacks = supported_callbacks(prob.solver, step_callbacks(func, structure.unflatten))
    if event_fn is None:
        ys = prob.solve(f, flat_y0, counter, callbacks=callbacks)
    else:
        event_t, ys = prob.solve_until_event(f, event_fn, flat_y0, counter, callbacks)
    if stats is not None:
        stats.record(counter.nfe, counter.accepted, counter.rejected, "forward")
    if event_fn is None:
        return structure.unflatten(ys)
    return event_t.to(t.dtype), structure.unflatten(ys)


def odeint_event(func: Callable[[torch.Tensor, State], State], y0: State, t0: torch.Tensor, *, event_fn: EventFn,
                 reverse_time: bool = False, odeint_interface: Callable = odeint,
                 **kwargs: Any) -> tuple[torch.Tensor, State]:
    """Solve from ``t0`` (forwards, or backwards with ``reverse_time``) until ``event_fn(t, y)`` crosses zero
    (the first entry to cross, for a vector); returns ``event_t`` and the states at ``[t0, event_t]``.

    ``odeint_interface`` (``odeint`` or ``odeint_adjoint``) does the solve with ``**kwargs``
    (``rtol``, ``atol``, ``method``, ``options``, ...); ``event_t`` and the final state are differentiable
    w.r.t. ``y0`` and the parameters, including through the event time.
    """
    if not torch.is_tensor(t0) or t0.numel() != 1:
        raise TypeError(f"t0 must be a tensor holding one time, got "
                        f"{tuple(t0.shape) if torch.is_tensor(t0) else type(t0).__name__}")
    t0 = t0.reshape(-1)
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    structure = StateStructure(y0)
    last = structure.flatten(tuple(s[-1] for s in solution) if structure.is_tuple else solution[-1], what="solution")
    flat_f = lambda s, y: structure.flatten(func(s, structure.unflatten(y)), what="func(t, y)")  # noqa: E731
    g = first_crossing(event_fn, structure, t0[0].to(event_t.dtype), structure.flatten(y0, what="y0"))
    event_t, last = EventTimeGradient.apply(flat_f, g, event_t, last)
    final = structure.unflatten(last)
    if structure.is_tuple:
        return event_t, tuple(torch.cat([s[:-1], p[None]]) for s, p in zip(solution, final))
    return event_t, torch.cat([solution[:-1], final[None]])
