"""How a tensor or tuple of tensors becomes the one flat real vector the solvers integrate, and back; the user's
norm and per-element tolerances on that vector."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Union

import torch

from neuralode.solvers.norms import MixedNorm, Norm, PairModulus

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]

# Half-precision states are refused: error control at any useful tolerance is below their resolution (bf16 dopri5
# on y' = -y ended at 1e6 instead of 0.37), and dynamics evaluated in them would make every error estimate noise.
_LOW_PRECISION = (torch.float16, torch.bfloat16, torch.complex32)
_LOW_PRECISION_HINT = ("; half precision cannot resolve the solver's error control: solve in float32 (y0.float(), "
                       "and the module .float()) and cast the result back")


class StateStructure:
    """How a tensor or tuple of tensors maps to one flat real vector and back.

    The solvers see only real vectors: parts of different dtypes are promoted to one common real dtype
    (as torchdiffeq's ``torch.cat`` does) and cast back to their own dtype on the way out, so ``func``,
    a user norm and the outputs see every part in its original dtype; a complex part travels as its
    (real, imaginary) pairs (``torch.view_as_real``).
    """

    def __init__(self, y0: State, what: str = "y0") -> None:
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        if self.is_tuple and not parts:
            raise ValueError(f"{what} is an empty tuple; give a tensor or a tuple of tensors")
        for p in parts:
            if not torch.is_tensor(p):
                raise TypeError(f"{what} must be a tensor or a tuple of tensors, got {type(p).__name__}")
            if not (p.is_floating_point() or p.is_complex()) or p.dtype in _LOW_PRECISION:
                raise TypeError(f"{what} must be floating point or complex (float32/float64/complex64/complex128), "
                                f"got {p.dtype}"
                                + (_LOW_PRECISION_HINT if p.dtype in _LOW_PRECISION else ""))
        if len({p.device for p in parts}) > 1:
            raise ValueError(f"all tensors of the tuple {what} must be on one device, got {[str(p.device) for p in parts]}")
        self.shapes = [p.shape for p in parts]
        self.dtypes = [p.dtype for p in parts]
        self.complex = [p.is_complex() for p in parts]
        self.numels = [p.numel() for p in parts]
        self.sizes = [2 * n if c else n for n, c in zip(self.numels, self.complex)]  # lengths in the flat vector
        self.real_dtypes = [p.real.dtype for p in parts]  # .real of a real tensor is itself: no copy
        self.dtype = functools.reduce(torch.promote_types, self.real_dtypes)
        self.device = parts[0].device
        # A single real tensor of the solver's dtype: flattening is a reshape (the hot path of training).
        self.plain = not self.is_tuple and not self.complex[0]
        offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        complex_segments = [(o, s) for o, s, c in zip(offsets, self.sizes, self.complex) if c and s]
        # Error control measures a complex element by its modulus, as torchdiffeq does (norms.error_scale).
        self.magnitude = PairModulus(complex_segments) if complex_segments else None

    def flatten(self, y: State, what: str = "y") -> torch.Tensor:
        parts = y if isinstance(y, tuple) else (y,)
        if (isinstance(y, tuple) != self.is_tuple or len(parts) != len(self.shapes)
                or any(not torch.is_tensor(p) or p.shape != s for p, s in zip(parts, self.shapes))):
            got = tuple(tuple(p.shape) if torch.is_tensor(p) else type(p).__name__ for p in parts)
            want = tuple(tuple(s) for s in self.shapes)
            raise ValueError(f"{what} has shape(s) {got if self.is_tuple else got[0]} but the state has "
                             f"shape(s) {want if self.is_tuple else want[0]}")
        if self.plain and not y.is_complex():
            return y.reshape(-1)
        flat = []
        for i, (p, is_complex, dtype) in enumerate(zip(parts, self.complex, self.dtypes)):
            if is_complex:
                # A real derivative of a complex part is a complex one with zero imaginary part.
                p = torch.view_as_real(p.resolve_conj() if p.is_complex() else p.to(dtype))
            elif p.is_complex():
                where, part = (f"{what}[{i}]", "that part of the state") if self.is_tuple else (what, "the state")
                raise TypeError(f"{where} is complex ({p.dtype}) but {part} is real ({dtype}); make y0 complex to "
                                "integrate complex dynamics")
            flat.append(p.reshape(-1).to(self.dtype))
        return flat[0] if len(flat) == 1 else torch.cat(flat)

    def unflatten(self, flat: torch.Tensor) -> State:
        """``(N,)`` -> state, or ``(T, N)`` -> state with a leading time axis."""
        lead = tuple(flat.shape[:-1])
        if self.plain:
            return flat.reshape(lead + tuple(self.shapes[0]))
        parts = []
        for seg, shape, dtype, real_dtype, is_complex in zip(flat.split(self.sizes, dim=-1), self.shapes, self.dtypes,
                                                             self.real_dtypes, self.complex):
            if is_complex:
                pairs = seg.to(real_dtype).reshape(lead + tuple(shape) + (2,))
                # torch.complex, not view_as_complex: a segment may start at an odd offset of the flat vector.
                parts.append(torch.complex(pairs[..., 0], pairs[..., 1]))
            else:
                parts.append(seg.reshape(lead + tuple(shape)).to(dtype))
        return tuple(parts) if self.is_tuple else parts[0]

    def default_norm(self) -> Norm:
        return MixedNorm(self.sizes, counts=self.numels, magnitude=self.magnitude)

    def user_norm(self, norm: Callable[[State], torch.Tensor]) -> Norm:
        """The user's norm (on the state's structure, as torchdiffeq calls it) on the flat vector."""
        return UserNorm(norm, self.unflatten, self.magnitude)

    def per_element(self, name: str, value: Any) -> torch.Tensor:
        """A per-element tolerance as a flat ``(N,)`` tensor matching the flat state: broadcast against a tensor
        state; for a tuple state one entry per part (each a number, a tensor broadcasting against that part or,
        as torchdiffeq takes it, a flat tensor of its size). A complex element's tolerance covers both halves."""
        if self.is_tuple:
            if torch.is_tensor(value) and value.ndim != 1:
                raise ValueError(f"{name} for a tuple state must be a number or have one entry per tensor of the "
                                 f"tuple ({len(self.shapes)}), got a tensor of shape {tuple(value.shape)}")
            entries = list(value)
            if len(entries) != len(self.shapes):
                raise ValueError(f"{name} for a tuple state must be a number or have one entry per tensor of the "
                                 f"tuple ({len(self.shapes)}), got {len(entries)}")
            names = [f"{name}[{i}]" for i in range(len(entries))]
        else:
            entries, names = [value], [name]
        flat = []
        for entry, entry_name, shape, numel, is_complex in zip(entries, names, self.shapes, self.numels, self.complex):
            tol = real_tensor(entry_name, entry).to(device=self.device, dtype=self.dtype)
            if _broadcastable(tol.shape, shape):
                tol = tol.expand(shape).reshape(-1)
            elif not (tol.ndim == 1 and tol.numel() == numel):  # torchdiffeq's flat form
                part = f" tensor {len(flat)} of the tuple" if self.is_tuple else ""
                raise ValueError(f"{entry_name} has shape {tuple(tol.shape)}, which does not broadcast against the "
                                 f"state{part}'s shape {tuple(shape)}")
            flat.append(tol.repeat_interleave(2) if is_complex else tol)
        return flat[0] if len(flat) == 1 else torch.cat(flat)


class UserNorm:
    """A user's norm, called on the flat vector with it in the user's structure (``to_user``); it carries the
    ``magnitude`` of complex parts for :func:`~neuralode.solvers.norms.error_scale` as the built-in norms do."""

    def __init__(self, norm: Callable[[Any], torch.Tensor], to_user: Callable[[torch.Tensor], Any],
                 magnitude: PairModulus | None) -> None:
        self.norm, self.to_user, self.magnitude = norm, to_user, magnitude

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_user(x))


def _broadcastable(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def real_tensor(name: str, value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        if value.requires_grad:
            raise ValueError(f"{name} must not require grad (step control is not differentiated); pass {name}.detach()")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got {value.dtype}")
        return value
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number or a tensor of numbers, got {type(value).__name__}") from None

