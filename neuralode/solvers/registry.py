"""The one registry of solver methods, by the name ``odeint(method=...)`` and ``solver=<method>`` take.

Every entry is a :class:`~neuralode.solvers.problem.Method` declaring its capabilities, so odeint, the adjoint
and the runner's config treat all method families alike. Explicit Runge-Kutta methods come from their tableaus;
other families register their instances here, under the names :mod:`neuralode.solvers.names` lists without torch.
"""
from __future__ import annotations

from neuralode.solvers.adams import Adams
from neuralode.solvers.implicit import ImplicitRK
from neuralode.solvers.implicit_tableaus import IMPLICIT_TABLEAUS
from neuralode.solvers.names import ADAMS_METHODS, ALIASES, SCIPY_METHOD
from neuralode.solvers.problem import Method
from neuralode.solvers.rk import AdaptiveRK, FixedGridRK
from neuralode.solvers.scipy_solver import ScipySolver
from neuralode.solvers.tableaus import TABLEAUS

SOLVERS: dict[str, Method] = {
    name: (AdaptiveRK(tab) if tab.adaptive else FixedGridRK(tab)) for name, tab in TABLEAUS.items()
}
SOLVERS.update({name: ImplicitRK(tab) for name, tab in IMPLICIT_TABLEAUS.items()})
SOLVERS.update({name: Adams(name, implicit) for name, implicit in ADAMS_METHODS.items()})
SOLVERS.update({alias: SOLVERS[name] for alias, name in ALIASES.items()})
SOLVERS[SCIPY_METHOD] = ScipySolver()

DEFAULT_METHOD = "dopri5"


def resolve_method(method: str | None, what: str = "method") -> Method:
    """The method named ``method`` (default ``dopri5``)."""
    method = DEFAULT_METHOD if method is None else method
    if method not in SOLVERS:
        raise ValueError(f"unknown {what} {method!r}; valid methods: {', '.join(SOLVERS)}")
    return SOLVERS[method]
