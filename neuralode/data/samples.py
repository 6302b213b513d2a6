"""What a data split of per-sample tensors offers whatever its fields: its length, a subset of its samples, a copy
with every tensor transformed (a device move)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TypeVar

import torch

SamplesT = TypeVar("SamplesT", bound="Samples")


class Samples:
    """Base of a dataclass whose fields are all tensors with the sample as their first axis."""

    def __len__(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]

    def apply(self: SamplesT, fn: Callable[[torch.Tensor], torch.Tensor]) -> SamplesT:
        return type(self)(*(fn(getattr(self, f.name)) for f in fields(self)))

    def rows(self: SamplesT, idx: torch.Tensor | slice) -> SamplesT:
        return self.apply(lambda x: x[idx])

    def to(self: SamplesT, device: torch.device | str) -> SamplesT:
        return self.apply(lambda x: x.to(device))
