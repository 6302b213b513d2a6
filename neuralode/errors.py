"""neuralode's errors in one hierarchy: everything under :class:`NeuralodeError` is a user-facing failure with a
one-line message (the CLI prints it and exits 2); any other exception is a bug and keeps its traceback.

Each also derives from ``ValueError`` (the config, data and checkpoint errors) or the built-in a solver error
has always been, so code that caught those keeps working.
"""
from __future__ import annotations

from neuralode.solvers.errors import (
    MaxNumStepsError,
    NeuralodeError,
    NonFiniteError,
    SolverError,
    StepUnderflowError,
    UnsupportedError,
)


class ConfigError(NeuralodeError, ValueError):
    """A config value is wrong; the message says which key, why, and what would be right."""


class DataError(NeuralodeError, ValueError):
    """Dataset files missing or unreadable; the message says where we looked and how to fix it."""


class CheckpointError(NeuralodeError, ValueError):
    """A checkpoint is missing, unreadable or not one of ours."""


class RunDirBusy(NeuralodeError, ValueError):
    """Another process is training into the run dir."""


__all__ = ["CheckpointError", "ConfigError", "DataError", "MaxNumStepsError", "NeuralodeError", "NonFiniteError", "RunDirBusy",
           "SolverError", "StepUnderflowError", "UnsupportedError"]
