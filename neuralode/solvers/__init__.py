"""ODE solvers: Butcher tableaus, one explicit RK stepper, PI step-size control, and the adjoint.

The errors load at once; the rest (which imports torch) on first use, so that code needing only the errors or
the method names (:mod:`neuralode.solvers.names`), such as the CLI's help, does not pay for importing torch.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from neuralode.solvers.errors import MaxNumStepsError, NeuralodeError, NonFiniteError, SolverError, StepUnderflowError

if TYPE_CHECKING:
    from neuralode.solvers.adjoint import odeint_adjoint
    from neuralode.solvers.odeint import odeint, odeint_event
    from neuralode.solvers.registry import SOLVERS
    from neuralode.solvers.stats import SolveStats

# Each name loaded on first use, and the submodule that defines it.
_LAZY = {"odeint_adjoint": "adjoint", "odeint": "odeint", "odeint_event": "odeint", "SOLVERS": "registry",
         "SolveStats": "stats"}

__all__ = ["SOLVERS", "MaxNumStepsError", "NeuralodeError", "NonFiniteError", "SolveStats", "SolverError",
           "StepUnderflowError", "odeint", "odeint_adjoint", "odeint_event"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'neuralode.solvers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"neuralode.solvers.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule neuralode.solvers.odeint binds it here under its name; the package's `odeint`
        # stays the function, as when the package imported it eagerly.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
