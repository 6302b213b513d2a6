"""``metrics.jsonl``'s epoch records: the one reader that tells a whole epoch record from a damaged line.

The trainer (on resume) and the report (what counts as a trained epoch) both read the file through
:func:`read_epoch_records`; torch and TensorBoard are not imported, so the report stays light.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralode.errors import NeuralodeError


class MetricsError(NeuralodeError, ValueError):
    """A metrics file lacks epochs that a checkpoint holds; the message names them."""


@dataclass
class EpochRecords:
    """The records of a metrics file, and the lines that are not records."""

    records: list[dict[str, Any]] = field(default_factory=list)  # file order; a repeated epoch keeps its last
    damaged: list[int] = field(default_factory=list)             # 1-based numbers of the other non-blank lines

    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    def missing(self, last_epoch: int) -> list[int]:
        """The epochs of 1..``last_epoch`` that have no record."""
        have = set(self.epochs())
        return [e for e in range(1, last_epoch + 1) if e not in have]


def is_epoch_record(value: Any) -> bool:
    """A JSON object whose ``epoch`` is a whole number >= 1 (not a bool); anything else is not an epoch."""
    return isinstance(value, dict) and type(value.get("epoch")) is int and value["epoch"] >= 1


def read_epoch_records(path: Path) -> EpochRecords:
    """Parse ``path`` (missing: no records); undecodable, cut or non-record lines are listed, not dropped silently."""
    try:
        text = Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return EpochRecords()
    by_epoch: dict[int, dict[str, Any]] = {}
    damaged = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if is_epoch_record(record):
            by_epoch.pop(record["epoch"], None)  # a repeat moves to where it was last written
            by_epoch[record["epoch"]] = record
        else:
            damaged.append(number)
    return EpochRecords(list(by_epoch.values()), damaged)
