"""The one registry of solver methods, by the name ``odeint(method=...)`` and ``solver=<method>`` take.

Every entry follows the :class:`Solver` protocol, so odeint, the adjoint and the runner's config treat
all method families alike. Explicit Runge-Kutta methods come from their tableaus; other families register
their instances here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from neuralode.solvers.adams import Adams
from neuralode.solvers.common import Counter, Dynamics
from neuralode.solvers.implicit import ImplicitRK
from neuralode.solvers.implicit_tableaus import IMPLICIT_TABLEAUS
from neuralode.solvers.norms import Norm
from neuralode.solvers.rk import AdaptiveRK, FixedGridRK
from neuralode.solvers.scipy_solver import ScipySolver
from neuralode.solvers.tableaus import TABLEAUS


class Solver(Protocol):
    """A method: ``solve`` integrates the flat dynamics ``f`` from ``y0`` (shape ``(N,)``) and returns the
    states at ``t``, shape ``(len(t), N)``, adding its work into ``counter``.

    ``increasing_time_only``: the method needs ``t`` increasing; odeint maps a decreasing ``t`` onto
    ``s = -t`` for it (and passes ``time_sign=-1`` so messages quote the caller's times).

    Optional: a method that calls the user's step hooks lists them in ``valid_callbacks`` (e.g.
    ``{"callback_step"}``) and then receives ``callbacks=StepCallbacks(...)`` in ``solve``; one that supports
    ``event_fn`` has ``solve_until_event`` (as :class:`~neuralode.solvers.rk.AdaptiveRK`).
    ``backpropagates = False``: gradients cannot flow through the steps (only through the adjoint).
    """

    name: str
    adaptive: bool
    increasing_time_only: bool
    valid_options: tuple[str, ...]

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None, *,
              rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0) -> torch.Tensor: ...


SOLVERS: dict[str, Solver] = {
    name: (AdaptiveRK(tab) if tab.adaptive else FixedGridRK(tab)) for name, tab in TABLEAUS.items()
}
SOLVERS.update({name: ImplicitRK(tab) for name, tab in IMPLICIT_TABLEAUS.items()})
SOLVERS.update({name: Adams(name, implicit) for name, implicit in (("explicit_adams", False), ("implicit_adams", True))})
SOLVERS["fixed_adams"] = SOLVERS["implicit_adams"]  # torchdiffeq's older name
SOLVERS["scipy_solver"] = ScipySolver()
