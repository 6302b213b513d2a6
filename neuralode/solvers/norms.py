"""Error norms for step-size control.

States are flattened into one vector inside the solver; a norm sees that vector. ``segments`` lets a
norm treat the parts of a flattened tuple separately (torchdiffeq's mixed norm: the max of the RMS norms
of the parts), and the seminorm of the adjoint is that same norm with the parameter-adjoint part left out.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries (0 for an empty tensor)."""
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.linalg.vector_norm(x) / (x.numel() ** 0.5)


class MixedNorm:
    """Max over segments of the RMS norm; segments with ``use[i] == False`` are left out.

    ``MixedNorm([n])`` is the plain RMS norm. For the adjoint's augmented state
    ``[y, adj_y, adj_params]`` leaving out the last segment gives the seminorm of Kidger et al. (2021):
    the parameter adjoints are integrals, never fed back into the dynamics, so their error need not
    shrink the step.
    """

    def __init__(self, sizes: Sequence[int], use: Sequence[bool] | None = None) -> None:
        self.sizes = [int(s) for s in sizes]
        self.use = [True] * len(self.sizes) if use is None else [bool(u) for u in use]
        if len(self.use) != len(self.sizes):
            raise ValueError("MixedNorm: `use` must have one flag per segment")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.sizes) == 1:
            return rms_norm(x)
        kept = [p for p, u in zip(x.split(self.sizes), self.use) if u and p.numel() > 0]
        if len(kept) == 1:
            return rms_norm(kept[0])
        if not kept:
            return x.new_zeros(())
        return torch.stack([rms_norm(p) for p in kept]).max()
