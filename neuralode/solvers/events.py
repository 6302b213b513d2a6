"""Terminal events: integrate until ``event_fn(t, y)`` crosses zero (torchdiffeq 0.2.5's ``event_fn`` and
``odeint_event``, in :mod:`neuralode.solvers.odeint`).

The solver checks the event's sign after every accepted step (one host read per step), then bisects the
step's interpolant for the crossing to within ``atol`` in time. The state at the event is differentiable
with the event time held fixed; :func:`odeint_event` adds the event time's own dependence on ``y0`` and the
parameters by the implicit function theorem: ``g(tau, y(tau)) = 0`` gives
``d tau = -(dg/dy . dy) / (dg/dt + dg/dy . f)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from neuralode.solvers.common import Dynamics
from neuralode.solvers.errors import NonFiniteError
from neuralode.solvers.structure import State, StateStructure

EventFn = Callable[[torch.Tensor, State], torch.Tensor]
FlatEvent = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Bisection halvings at most: beyond this the bracket is below float64 resolution of any step.
_MAX_BISECTIONS = 64


def first_crossing(event_fn: EventFn, structure: StateStructure, t0: torch.Tensor, y0: torch.Tensor) -> FlatEvent:
    """One scalar event on the flat state from ``event_fn``'s entries: each is signed to start positive, and
    their minimum crosses zero when the first of them does."""
    with torch.no_grad():
        start = _event_values(event_fn, t0, structure.unflatten(y0))
        if not bool(torch.isfinite(start).all()):
            raise ValueError(f"event_fn(t0, y0) returned {start.tolist()}; it must be finite (its first zero "
                             "crossing ends the solve)")
        signs = torch.sign(start)

    def g(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (_event_values(event_fn, t, structure.unflatten(y)) * signs).min()
    return g


def _event_values(event_fn: EventFn, t: torch.Tensor, y: State) -> torch.Tensor:
    values = event_fn(t, y)
    if not torch.is_tensor(values) or not values.is_floating_point() or values.numel() == 0:
        got = f"a {values.dtype} tensor of shape {tuple(values.shape)}" if torch.is_tensor(values) else \
            type(values).__name__
        raise TypeError(f"event_fn(t, y) must return a real floating-point tensor of one or more event values, "
                        f"got {got}")
    return values.reshape(-1)


def _scalar_tol(atol: Any) -> float:
    return float(atol.min()) if torch.is_tensor(atol) else float(atol)


class EventWatch:
    """A scalar event ``g(t, y)`` in the solver's time and flat state, watched for a change of sign.

    After :meth:`locate`, ``time`` holds the event time (no gradient) and ``state`` the state there
    (differentiable through the step's interpolant).
    """

    def __init__(self, g: FlatEvent, t0: torch.Tensor, y0: torch.Tensor, time_sign: float = 1.0) -> None:
        self.g = g
        self.time_sign = time_sign  # messages quote the caller's time
        with torch.no_grad():
            self.sign0 = torch.sign(g(t0, y0))
        self.time: torch.Tensor | None = None
        self.state: torch.Tensor | None = None

    def crossed(self, t: torch.Tensor, y: torch.Tensor) -> bool:
        with torch.no_grad():
            value = self.g(t, y)
            crossed, finite = (torch.stack([torch.sign(value) != self.sign0, torch.isfinite(value)])).tolist()
        if not finite:  # the one extra host read per accepted step, above, also tells this
            raise NonFiniteError(f"event_fn returned {float(value)} at t={self.time_sign * float(t):.6g}; it must stay "
                                 "finite along the solution")
        return crossed

    def locate(self, interp: Callable[[torch.Tensor], torch.Tensor], ta: torch.Tensor, tb: torch.Tensor,
               h: float, atol: Any) -> None:
        """Bisect ``[ta, tb]`` (a step of length ``h``) on ``interp`` until the bracket is below ``atol``; the
        halvings run on the device without reading anything back."""
        tol = _scalar_tol(atol)
        halvings = _MAX_BISECTIONS if tol <= 0 else min(_MAX_BISECTIONS, max(0, math.ceil(math.log2(abs(h) / tol))))
        with torch.no_grad():
            lo, hi = ta.detach(), tb.detach()
            for _ in range(halvings):
                mid = (lo + hi) / 2
                before = torch.sign(self.g(mid, interp(mid))) == self.sign0
                lo, hi = torch.where(before, mid, lo), torch.where(before, hi, mid)
            self.time = (lo + hi) / 2
        self.state = interp(self.time)


class EventTimeGradient(torch.autograd.Function):
    """Identity on ``(event_t, state)`` whose backward moves the event time with the state (implicit function
    theorem): a gradient on the event time, and the state's change through the moving end time, both reach
    the state computed at the fixed event time, and through it ``y0`` and the parameters."""

    @staticmethod
    def forward(ctx, f: Dynamics, g: FlatEvent, event_t: torch.Tensor, state: torch.Tensor):
        ctx.f, ctx.g = f, g
        ctx.save_for_backward(event_t, state)
        return event_t.detach(), state.detach()

    @staticmethod
    def backward(ctx, grad_t: torch.Tensor, grad_state: torch.Tensor):
        event_t, state = ctx.saved_tensors
        with torch.enable_grad():
            t_ = event_t.detach().requires_grad_(True)
            y_ = state.detach().requires_grad_(True)
            dg_dt, dg_dy = torch.autograd.grad(ctx.g(t_, y_), (t_, y_), allow_unused=True)
        dg_dt = torch.zeros_like(event_t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(state) if dg_dy is None else dg_dy
        with torch.no_grad():
            slope = ctx.f(event_t.detach(), state.detach())
        # d(event_t)/d(state at fixed time) = -dg_dy / (dg/dt along the solution).
        speed = dg_dt + dg_dy @ slope
        moved = (grad_t + grad_state @ slope) / speed
        return None, None, None, grad_state - dg_dy * moved
