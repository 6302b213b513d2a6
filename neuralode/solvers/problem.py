"""A validated solve (:class:`Problem`) and what a solver method declares (:class:`Method`): the problem travels
whole from ``odeint`` to the method, which reads its capabilities from class attributes instead of being probed.
The arguments are checked, and a Problem built, in :mod:`neuralode.solvers.arguments`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from neuralode.solvers.common import Counter, Dynamics, StepCallbacks
from neuralode.solvers.events import EventFn, EventWatch, first_crossing
from neuralode.solvers.norms import Norm, Tolerance
from neuralode.solvers.structure import StateStructure


class Method(ABC):
    """A method integrates a :class:`Problem` with the flat dynamics ``f`` from ``y0`` (shape ``(N,)``), adding
    its work into a :class:`~neuralode.solvers.common.Counter`. Its class attributes say what it can do; odeint,
    the adjoint and the runner read them."""

    name: str
    # Step size chosen by error control (takes rtol/atol); otherwise steps on a grid.
    adaptive: ClassVar[bool] = False
    # Needs ``t`` increasing: a decreasing ``t`` reaches it as ``s = -t`` (``Problem.time_sign = -1``, so that
    # messages quote the caller's times).
    increasing_time_only: ClassVar[bool] = False
    valid_options: tuple[str, ...] = ()
    # The user's step hooks it calls (``solve``'s ``callbacks``).
    valid_callbacks: ClassVar[frozenset[str]] = frozenset()
    # Gradients can flow through its steps (else only through odeint_adjoint).
    backpropagates: ClassVar[bool] = True
    # It may step past the last output time; ``solve`` then takes ``land=True`` to end on it exactly.
    can_overshoot: ClassVar[bool] = False
    # ``solve`` takes ``event``: it ends where the event's sign changes.
    supports_events: ClassVar[bool] = False
    # The dtype time is held in unless options['dtype'] says otherwise (None: the state's dtype).
    default_time_dtype: ClassVar[torch.dtype | None] = None

    @abstractmethod
    def solve(self, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter, *,
              callbacks: StepCallbacks | None = None, event: EventWatch | None = None,
              land: bool = False) -> torch.Tensor:
        """The states at ``prob.t``, shape ``(len(t), N)``; with ``event``, the states at ``[t[0], event time]``
        (only the direction of ``t[1]`` counts), the event time left in ``event.time``. ``callbacks``: the hooks
        of ``valid_callbacks``; ``land``: where ``can_overshoot``, end on ``t[-1]`` exactly."""


@dataclass
class Problem:
    """A validated solve: everything but the initial value and the dynamics' parameters. ``time_sign`` is -1 for
    the increasing problem a method solves on ``s = -t`` (see :meth:`oriented`)."""

    solver: Method
    structure: StateStructure
    t: torch.Tensor
    t_host: list[float] | None
    rtol: Tolerance
    atol: Tolerance
    options: dict[str, Any]
    norm: Norm
    time_sign: float = 1.0

    def replace(self, **changes: Any) -> Problem:
        """The same problem with some fields changed, e.g. one interval of the adjoint's backward solve."""
        return dataclasses.replace(self, **changes)

    def oriented(self, f: Dynamics, callbacks: StepCallbacks | None
                 ) -> tuple[Problem, Dynamics, StepCallbacks | None]:
        """The problem as its method solves it: a decreasing ``t``, for a method that steps only forwards, becomes
        ``s = -t`` with ``ds/dy = -f(-s, y)`` (and hooks that still see the caller's time)."""
        if not (self.solver.increasing_time_only and self.t_host[-1] < self.t_host[0]):
            return self, f, callbacks
        flipped = self.replace(t=-self.t, t_host=[-x for x in self.t_host], time_sign=-self.time_sign)
        return flipped, (lambda s, y: -f(-s, y)), None if callbacks is None else callbacks.reversed()

    def solve(self, f: Dynamics, y0: torch.Tensor, counter: Counter, callbacks: StepCallbacks | None = None,
              land: bool = False) -> torch.Tensor:
        """Integrate the flat dynamics ``f`` from the flat ``y0`` over ``t``; returns ``(len(t), N)``. ``land``: end
        on ``t[-1]`` exactly, where a method would otherwise step past it and interpolate back."""
        if self.t_host is not None and len(self.t_host) == 1:
            return y0[None]
        prob, f, callbacks = self.oriented(f, callbacks)
        return prob.solver.solve(prob, f, y0, counter, callbacks=callbacks, land=land)

    def solve_until_event(self, f: Dynamics, event_fn: EventFn, y0: torch.Tensor, counter: Counter,
                          callbacks: StepCallbacks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve from ``t[0]`` in the direction of ``t[1]`` (``t = [t0, t1]``: only the direction of ``t1`` counts)
        until ``event_fn`` crosses zero; returns the event time (the caller's time, no gradient) and the flat
        states ``(2, N)`` at ``[t0, event time]``."""
        t_host, solver = self.t_host, self.solver
        if t_host is None:
            raise ValueError("event_fn cannot be used inside CUDA-graph capture (each step reads the event's sign)")
        if len(t_host) != 2:
            raise ValueError(f"with event_fn, t must hold 2 times [t0, t1] (t1 gives only the direction), got "
                             f"{len(t_host)}")
        if not solver.supports_events:
            raise ValueError(f"method {solver.name!r} does not support event_fn; use a Runge-Kutta or Adams method "
                             "(e.g. 'dopri5', or 'rk4' with options['step_size'])")
        g = first_crossing(event_fn, self.structure, self.t[0], y0)
        with torch.no_grad():
            at_start = bool(g(self.t[0], y0) == 0)
        if at_start:
            return self.t[0].detach(), torch.stack([y0, y0])
        prob, f_solver, callbacks = self.oriented(f, callbacks)
        g_solver = g if prob is self else (lambda s, y: g(-s, y))
        watch = EventWatch(g_solver, prob.t[0], y0, prob.time_sign)
        ys = solver.solve(prob, f_solver, y0, counter, callbacks=callbacks, event=watch)
        return prob.time_sign * watch.time, ys
