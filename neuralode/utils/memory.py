"""Peak memory of a training epoch, measured for real on both GPU and CPU."""
from __future__ import annotations

from types import TracebackType
from typing import Any

import torch


class PeakMemory:
    """Context manager measuring the peak memory of what runs inside it.

    On CUDA: ``torch.cuda.max_memory_allocated`` (kind ``cuda_max_allocated``). On CPU, where torch keeps no
    allocator statistics, the peak total size of the tensors autograd holds for the backward pass
    (kind ``saved_for_backward``) -- the quantity the adjoint method keeps constant in the number of steps.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "cuda_max_allocated" if self.cuda else "saved_for_backward"
        self._live = 0
        self._peak = 0
        self._refs: dict[tuple[int, int], int] = {}
        self._hooks: Any = None

    @property
    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._peak / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
            self._hooks.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(exc_type, exc, tb)
            self._hooks = None

    def _pack(self, tensor: torch.Tensor) -> "_Saved":
        return _Saved(tensor, self)

    # A storage saved by several ops (a weight used twice, views of one activation) is counted once.
    def _acquire(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage (sparse, nested)
            return None
        key = (storage.data_ptr(), storage.nbytes())
        count = self._refs.get(key, 0)
        self._refs[key] = count + 1
        if count == 0:
            self._live += key[1]
            self._peak = max(self._peak, self._live)
        return key

    def _release(self, key: tuple[int, int] | None) -> None:
        if key is None:
            return
        count = self._refs[key] - 1
        if count:
            self._refs[key] = count
        else:
            del self._refs[key]
            self._live -= key[1]


class _Saved:
    """What autograd stores instead of a saved tensor; freeing it (when the graph goes) releases the bytes."""

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: PeakMemory) -> None:
        self.tensor = tensor
        self.meter = meter
        self.key = meter._acquire(tensor)

    def __del__(self) -> None:
        self.meter._release(self.key)


def _unpack(saved: _Saved) -> torch.Tensor:
    return saved.tensor
