"""Counters of the work a solve did, filled in by the solver itself."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class SolveStats:
    """Work done by the solves recorded into this object since the last :meth:`reset`.

    ``*_forward`` counts the forward solve(s); ``*_backward`` the adjoint (backward) solve(s).
    With direct backpropagation through the solver there is no backward solve, so those stay 0.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted_forward: int = 0
    steps_rejected_forward: int = 0
    steps_accepted_backward: int = 0
    steps_rejected_backward: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def add(self, other: "SolveStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
