"""Whether two measured quantities differ beyond their seed-to-seed spread.

A difference counts only if the means are more than two standard errors apart (the standard error of the
difference of two means, from each side's sample standard deviation). With one seed a side's spread is
unknown, so no difference is called: a single run cannot tell a win from noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from neuralode.report.runs import Spread

Z = 2.0  # standard errors a difference must exceed to count


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two spreads' means, with its standard error (None: a side has one seed)."""

    diff: float
    se: float | None

    @property
    def judged(self) -> bool:
        return self.se is not None

    @property
    def clear(self) -> bool:
        """The means differ by more than ``Z`` standard errors (never with one seed)."""
        return self.se is not None and abs(self.diff) > Z * self.se

    def describe(self, spec: str = ".3g", unit: str = "") -> str:
        """``-0.44 pp (SE 0.12, 3.7 SE)``, or ``-0.44 pp (one seed: spread unknown)``."""
        if self.se is None:
            return f"{self.diff:+{spec}}{unit} (one seed: spread unknown)"
        z = abs(self.diff) / self.se if self.se > 0 else math.inf
        return f"{self.diff:+{spec}}{unit} (SE {self.se:{spec}}, {z:.1f} SE)"


def difference(a: Spread, b: Spread) -> Difference:
    if a.sem is None or b.sem is None:
        return Difference(a.mean - b.mean, None)
    return Difference(a.mean - b.mean, math.hypot(a.sem, b.sem))


def lower(a: Spread | None, b: Spread | None, name_a: str, name_b: str) -> str:
    """Which of two losses is lower, for a table's last column: a name only when the spread supports it."""
    if a is None or b is None:
        return "-"
    d = difference(a, b)
    if not d.judged:
        return f"{name_a if d.diff < 0 else name_b}? (one seed)"
    if not d.clear:
        return f"neither (within {Z:g} SE)"
    return name_a if d.diff < 0 else name_b
