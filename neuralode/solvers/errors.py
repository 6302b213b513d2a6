"""The solver library's errors, under the one base every error of neuralode derives from.

The base lives here, not in the rest of the package, so that ``neuralode.solvers`` stays self-contained;
``neuralode.errors`` builds the package's config, data and checkpoint errors on it. Each solver error also
derives from the built-in it has always been (``RuntimeError``, ``FloatingPointError``), so code that caught
those keeps working.
"""
from __future__ import annotations


class NeuralodeError(Exception):
    """Base of every error neuralode raises on purpose: the message is one line saying what is wrong and what
    would be right. Anything else reaching the user is a bug and keeps its traceback."""


class SolverError(NeuralodeError):
    """A solve could not finish."""


class MaxNumStepsError(SolverError, RuntimeError):
    """The adaptive solver needed more steps than its cap allows; ``option`` names the cap that stopped it
    (``max_num_steps``: per output interval, as torchdiffeq; ``max_steps_per_solve``: the whole solve)."""

    def __init__(self, message: str, option: str = "max_num_steps") -> None:
        super().__init__(message)
        self.option = option


class NonFiniteError(SolverError, FloatingPointError):
    """The dynamics produced inf/nan that shrinking the step did not cure."""


class StepUnderflowError(NonFiniteError):
    """The step size fell below what the time's floating-point resolution can represent. A subclass of
    :class:`NonFiniteError`, as which it was raised before it had a name of its own."""


class UnsupportedError(NeuralodeError, ValueError):
    """A combination of arguments or options the solvers do not support; the message names what is supported. A
    ``ValueError`` too, as every bad argument of a solve is."""
