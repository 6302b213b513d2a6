"""The names of the solver methods, without importing torch: the runner lists them as ``solver=<name>``
options (``neuralode train --help`` prints them) before any command solves an ODE.

:mod:`neuralode.solvers.registry` builds :data:`~neuralode.solvers.registry.SOLVERS` from these same tables, so
the two cannot disagree.
"""
from __future__ import annotations

from neuralode.solvers.implicit_tableaus import IMPLICIT_TABLEAUS
from neuralode.solvers.tableaus import TABLEAUS

ADAMS_METHODS: dict[str, bool] = {"explicit_adams": False, "implicit_adams": True}  # name: implicit corrector
ALIASES: dict[str, str] = {"fixed_adams": "implicit_adams"}  # torchdiffeq's older name
SCIPY_METHOD = "scipy_solver"

METHOD_NAMES: tuple[str, ...] = (*TABLEAUS, *IMPLICIT_TABLEAUS, *ADAMS_METHODS, *ALIASES, SCIPY_METHOD)
