"""What every solver method declares about itself, so that odeint, the adjoint and the runner read capabilities
instead of probing for them."""
from __future__ import annotations

from typing import ClassVar

import torch


class Method:
    """A method integrates the flat dynamics ``f`` from ``y0`` (shape ``(N,)``) and returns the states at ``t``,
    shape ``(len(t), N)``, adding its work into a :class:`~neuralode.solvers.common.Counter`:
    ``solve(f, y0, t, t_host, *, rtol, atol, norm, options, counter, time_sign=1.0, **features)``, the features
    being those its class attributes declare."""

    name: str
    # Step size chosen by error control (takes rtol/atol); otherwise steps on a grid.
    adaptive: ClassVar[bool] = False
    # Needs ``t`` increasing: odeint maps a decreasing ``t`` onto ``s = -t`` (and passes ``time_sign=-1`` so
    # messages quote the caller's times).
    increasing_time_only: ClassVar[bool] = False
    valid_options: tuple[str, ...] = ()
    # The user's step hooks it calls; ``solve`` then takes ``callbacks=StepCallbacks(...)``.
    valid_callbacks: ClassVar[frozenset[str]] = frozenset()
    # Gradients can flow through its steps (else only through odeint_adjoint).
    backpropagates: ClassVar[bool] = True
    # It may step past the last output time; ``solve`` then takes ``land=True`` to end on it exactly.
    can_overshoot: ClassVar[bool] = False
    # It has ``solve_until_event`` (``event_fn``).
    supports_events: ClassVar[bool] = False
    # The dtype time is held in unless options['dtype'] says otherwise (None: the state's dtype).
    default_time_dtype: ClassVar[torch.dtype | None] = None
