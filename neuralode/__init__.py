"""neuralode: reproduce "Neural Ordinary Differential Equations" (Chen et al., 2018).

The solver API (``odeint``, ``odeint_adjoint``, ...) loads on first use, so that ``neuralode --help`` and
other code that never solves an ODE do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SOLVERS", "SolveStats", "odeint", "odeint_adjoint", "odeint_event"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("neuralode.solvers"), name)
    raise AttributeError(f"module 'neuralode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
