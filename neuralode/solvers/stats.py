"""Counters of the work a solve did, filled in by the solver itself."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class SampleCounts:
    """The work of one per-sample solve (``options=dict(per_sample=True)``) for each sample, as ``(B,)`` integer
    tensors on the state's device: ``nfe`` counts the calls of ``func`` made while the sample was still advancing
    (every call evaluates the whole batch), ``accepted``/``rejected`` the sample's own steps."""

    nfe: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor

    def __add__(self, other: SampleCounts) -> SampleCounts:
        return SampleCounts(self.nfe + other.nfe, self.accepted + other.accepted, self.rejected + other.rejected)


@dataclass
class SolveStats:
    """Work done by the solves recorded into this object since the last :meth:`reset`.

    ``*_forward`` counts the forward solve(s); ``*_backward`` the adjoint (backward) solve(s).
    With direct backpropagation through the solver there is no backward solve, so those stay 0.
    ``per_sample_forward``/``per_sample_backward``: the per-sample counts of the latest per-sample solve of that
    phase (a backward solve's summed over its output intervals; None until one ran). For such a solve ``nfe_*``
    counts the calls of ``func`` (each evaluates the whole batch) and ``steps_*`` the samples' steps, summed.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted_forward: int = 0
    steps_rejected_forward: int = 0
    steps_accepted_backward: int = 0
    steps_rejected_backward: int = 0
    per_sample_forward: SampleCounts | None = None
    per_sample_backward: SampleCounts | None = None

    def _counts(self) -> list[str]:
        return [f.name for f in fields(self) if not f.name.startswith("per_sample_")]

    def reset(self) -> None:
        for name in self._counts():
            setattr(self, name, 0)
        self.per_sample_forward = self.per_sample_backward = None

    def record(self, nfe: int, accepted: int, rejected: int, phase: str, per_sample: SampleCounts | None = None
               ) -> None:
        """Add one solve's counts to the ``phase`` (``"forward"`` or ``"backward"``) counters; a per-sample solve's
        ``per_sample`` counts become that phase's latest."""
        if per_sample is not None:
            setattr(self, f"per_sample_{phase}", per_sample)
        setattr(self, f"nfe_{phase}", getattr(self, f"nfe_{phase}") + nfe)
        setattr(self, f"steps_accepted_{phase}", getattr(self, f"steps_accepted_{phase}") + accepted)
        setattr(self, f"steps_rejected_{phase}", getattr(self, f"steps_rejected_{phase}") + rejected)

    def add(self, other: "SolveStats") -> None:
        """Add ``other``'s totals; its per-sample counts, where it has any, become this object's latest."""
        for name in self._counts():
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for phase in ("forward", "backward"):
            if getattr(other, f"per_sample_{phase}") is not None:
                setattr(self, f"per_sample_{phase}", getattr(other, f"per_sample_{phase}"))

    def as_dict(self) -> dict[str, int]:
        """The totals (the per-sample tensors are left out)."""
        return {name: getattr(self, name) for name in self._counts()}
