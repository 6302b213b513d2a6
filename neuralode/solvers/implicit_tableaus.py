"""Butcher tableaus of the implicit Runge-Kutta methods, as plain data.

The method names are those of torchdiffeq's implicit fixed-grid family (``implicit_euler`` ... ``trbdf2``).
Irrational coefficients are the published closed forms evaluated in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain data: the method names load without torch
    import torch

F = Fraction


@dataclass(frozen=True)
class ImplicitTableau:
    """An implicit Runge-Kutta method: ``c``, the full ``s x s`` matrix ``a`` and the weights ``b``."""

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.b) != s or len(self.a) != s or any(len(row) != s for row in self.a):
            raise ValueError(f"tableau {self.name!r}: a must be {s}x{s} and b of length {s}")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > 1e-14:
                raise ValueError(f"tableau {self.name!r}: row {i} of a sums to {sum(row)}, not c[{i}]={self.c[i]}")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def diagonally_implicit(self) -> bool:
        """``a`` is lower triangular: the stages can be solved one after another."""
        return all(self.a[i][j] == 0 for i in range(self.stages) for j in range(i + 1, self.stages))

    @property
    def explicit_first_stage(self) -> bool:
        """The first stage is ``f(t0, y0)`` (an ESDIRK: trapezoid, TR-BDF2)."""
        return self.diagonally_implicit and self.a[0][0] == 0

    @property
    def stiffly_accurate(self) -> bool:
        """The last stage is the step's end point (``c_s = 1``, last row of ``a`` is ``b``): with an explicit first
        stage, the last stage derivative is the next step's first."""
        return self.c[-1] == 1 and self.a[-1] == self.b

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Coefficients as tensors on ``device``, cached per dtype and device."""
        key = (dtype, str(device))
        if key not in self._cache:
            import torch

            mk = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
            self._cache[key] = {"c": mk(self.c), "a": mk(self.a), "b": mk(self.b)}
        return self._cache[key]


def _make(name: str, order: int, c, a, b) -> ImplicitTableau:
    return ImplicitTableau(name, order, tuple(float(x) for x in c), tuple(tuple(float(x) for x in row) for row in a),
                           tuple(float(x) for x in b))


_S3, _S6, _S15 = math.sqrt(3), math.sqrt(6), math.sqrt(15)
# SDIRK2 and TR-BDF2 share gamma = 1 - 1/sqrt(2), which makes both L-stable.
_GAMMA = 1 - math.sqrt(2) / 2
_W = math.sqrt(2) / 4  # TR-BDF2's weight of its first two stages, (1 - gamma) / 2

IMPLICIT_EULER = _make("implicit_euler", 1, [1], [[1]], [1])
IMPLICIT_MIDPOINT = _make("implicit_midpoint", 2, [F(1, 2)], [[F(1, 2)]], [1])
TRAPEZOID = _make("trapezoid", 2, [0, 1], [[0, 0], [F(1, 2), F(1, 2)]], [F(1, 2), F(1, 2)])
# Radau IIA (Hairer & Wanner, Solving ODEs II, Table IV.5.5): order 2s - 1, stiffly accurate, L-stable.
RADAU_IIA3 = _make("radauIIA3", 3, [F(1, 3), 1], [[F(5, 12), F(-1, 12)], [F(3, 4), F(1, 4)]], [F(3, 4), F(1, 4)])
RADAU_IIA5 = _make(
    "radauIIA5", 5,
    [(4 - _S6) / 10, (4 + _S6) / 10, 1],
    [[(88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225],
     [(296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225],
     [(16 - _S6) / 36, (16 + _S6) / 36, 1 / 9]],
    [(16 - _S6) / 36, (16 + _S6) / 36, 1 / 9])
# Gauss-Legendre collocation (Hairer, Norsett & Wanner I, Table II.7.3-4): order 2s, symmetric, A-stable.
GL4 = _make("gl4", 4, [0.5 - _S3 / 6, 0.5 + _S3 / 6], [[0.25, 0.25 - _S3 / 6], [0.25 + _S3 / 6, 0.25]], [0.5, 0.5])
GL6 = _make(
    "gl6", 6,
    [0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10],
    [[5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30],
     [5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24],
     [5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36]],
    [5 / 18, 4 / 9, 5 / 18])
# Alexander's two-stage SDIRK (1977).
SDIRK2 = _make("sdirk2", 2, [_GAMMA, 1], [[_GAMMA, 0], [1 - _GAMMA, _GAMMA]], [1 - _GAMMA, _GAMMA])
# TR-BDF2 as an ESDIRK (Hosea & Shampine 1996): a trapezoidal stage to 2 gamma, then BDF2 to 1.
TRBDF2 = _make("trbdf2", 2, [0, 2 * _GAMMA, 1], [[0, 0, 0], [_GAMMA, _GAMMA, 0], [_W, _W, _GAMMA]], [_W, _W, _GAMMA])

IMPLICIT_TABLEAUS: dict[str, ImplicitTableau] = {
    tab.name: tab for tab in (IMPLICIT_EULER, IMPLICIT_MIDPOINT, TRAPEZOID, RADAU_IIA3, RADAU_IIA5, GL4, GL6,
                              SDIRK2, TRBDF2)
}
