"""Error norms for step-size control.

States are flattened into one real vector inside the solver; a norm sees that vector. ``segments`` lets a
norm treat the parts of a flattened tuple separately (torchdiffeq's mixed norm: the max of the RMS norms
of the parts), and the seminorm of the adjoint is that same norm with the parameter-adjoint part left out.
A complex part is flattened into (real, imaginary) pairs. To measure it as torchdiffeq measures a complex
tensor, both halves of an element are scaled by its modulus ``|z|`` (:class:`PairModulus`, which a norm for
such a state carries as ``magnitude``) and its RMS divides by its number of complex elements.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]
# rtol/atol as the solvers get them: a host number, or a flat (N,) tensor of per-element tolerances matching the
# flat state (odeint.check_tolerance); both enter only ``atol + rtol * |y|``, which broadcasts either way.
Tolerance = Union[float, torch.Tensor]


class PairModulus:
    """``|x|`` of a flat real state, except that both halves of a complex element (a ``(re, im)`` pair inside
    the segments ``complex_segments`` of ``x``, as ``(offset, length)``) get the element's modulus."""

    def __init__(self, complex_segments: Sequence[tuple[int, int]]) -> None:
        self.complex_segments = list(complex_segments)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.abs()
        for offset, length in self.complex_segments:
            modulus = torch.linalg.vector_norm(x[offset:offset + length].reshape(-1, 2), dim=-1)
            out[offset:offset + length] = modulus.repeat_interleave(2)
        return out


def error_scale(norm: Norm, y0: torch.Tensor, y1: torch.Tensor, rtol: Tolerance, atol: Tolerance) -> torch.Tensor:
    """``atol + rtol * max(|y0|, |y1|)`` elementwise, ``|.|`` being ``norm.magnitude`` where the norm has one
    (a state with complex parts) and the absolute value otherwise."""
    magnitude = getattr(norm, "magnitude", None)
    if magnitude is None:
        return torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
    return torch.maximum(magnitude(y0), magnitude(y1)).mul_(rtol).add_(atol)


def rms_norm(x: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Root mean square of all entries (0 for an empty tensor); ``count``: the number of elements ``x``
    stands for, when it is not ``x.numel()`` (a complex tensor's real pairs stand for half as many)."""
    count = x.numel() if count is None else count
    if count == 0:
        return x.new_zeros(())
    return torch.linalg.vector_norm(x) / (count ** 0.5)


class MixedNorm:
    """Max over segments of the RMS norm; segments with ``use[i] == False`` are left out.

    ``MixedNorm([n])`` is the plain RMS norm. For the adjoint's augmented state
    ``[y, adj_y, adj_params]`` leaving out the last segment gives the seminorm of Kidger et al. (2021):
    the parameter adjoints are integrals, never fed back into the dynamics, so their error need not
    shrink the step.
    """

    def __init__(self, sizes: Sequence[int], use: Sequence[bool] | None = None,
                 counts: Sequence[int] | None = None, magnitude: PairModulus | None = None) -> None:
        self.magnitude = magnitude
        self.sizes = [int(s) for s in sizes]
        self.use = [True] * len(self.sizes) if use is None else [bool(u) for u in use]
        # Elements each segment stands for: its size, or half of it for a complex part's real pairs.
        self.counts = list(self.sizes) if counts is None else [int(c) for c in counts]
        if len(self.use) != len(self.sizes) or len(self.counts) != len(self.sizes):
            raise ValueError("MixedNorm: `use` and `counts` must have one entry per segment")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.sizes) == 1:
            return rms_norm(x, self.counts[0])
        kept = [(p, c) for p, u, c in zip(x.split(self.sizes), self.use, self.counts) if u and p.numel() > 0]
        if len(kept) == 1:
            return rms_norm(*kept[0])
        if not kept:
            return x.new_zeros(())
        return torch.stack([rms_norm(p, c) for p, c in kept]).max()
