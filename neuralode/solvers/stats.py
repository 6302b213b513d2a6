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

    def record(self, nfe: int, accepted: int, rejected: int, phase: str) -> None:
        """Add one solve's counts to the ``phase`` (``"forward"`` or ``"backward"``) counters."""
        setattr(self, f"nfe_{phase}", getattr(self, f"nfe_{phase}") + nfe)
        setattr(self, f"steps_accepted_{phase}", getattr(self, f"steps_accepted_{phase}") + accepted)
        setattr(self, f"steps_rejected_{phase}", getattr(self, f"steps_rejected_{phase}") + rejected)

    def add(self, other: "SolveStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
