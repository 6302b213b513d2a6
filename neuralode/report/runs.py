"""Reading run outputs: ``metrics.jsonl`` and the config Hydra saved beside it.

Everything the report shows comes from files on disk, so the report can be rebuilt without training.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuralode.errors import NeuralodeError
from neuralode.utils.files import read_jsonl

METRICS_FILE = "metrics.jsonl"


class MetricsError(NeuralodeError, ValueError):
    """``metrics.jsonl`` holds something other than one record per epoch 1..n: the run's cells are blanked."""


def _epoch(record: dict[str, Any]) -> int | None:
    epoch = record.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1 else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl``, one per epoch 1..n in order; [] if the file is missing.

    A run killed while writing may leave a truncated last line: it is skipped rather than failing
    the whole report. If an epoch was logged twice (resumed run), the later record wins. A record without a
    positive integer ``epoch``, or epochs that are not 1..n, raise :class:`MetricsError`: counting such lines
    as epochs would let a damaged or crafted file pass as a finished run.
    """
    path = Path(run_dir) / METRICS_FILE
    by_epoch: dict[int, dict[str, Any]] = {}
    for line_no, rec in enumerate(read_jsonl(path), 1):
        epoch = _epoch(rec)
        if epoch is None:
            raise MetricsError(f"{path}: record {line_no} has epoch {rec.get('epoch')!r}, not a positive integer")
        by_epoch[epoch] = rec
    epochs = sorted(by_epoch)
    if epochs != list(range(1, len(epochs) + 1)):
        raise MetricsError(f"{path}: epochs {epochs} are not 1..{len(epochs)}")
    return [by_epoch[e] for e in epochs]


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The composed config Hydra saved for the run (``.hydra/config.yaml``); {} if absent."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    n_params: int | None = None
    damage: str = ""  # why the run's files were not used (its cells are blank), e.g. a MetricsError

    @property
    def exists(self) -> bool:
        return bool(self.records)

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    @property
    def epochs(self) -> int:
        return len(self.records)

    def final(self, key: str) -> float | None:
        """Value of ``key`` in the last record that has a finite one."""
        for rec in reversed(self.records):
            v = _finite(rec.get(key))
            if v is not None:
                return v
        return None

    def best(self, key: str, mode: str = "min") -> float | None:
        vals = [v for v in (_finite(r.get(key)) for r in self.records) if v is not None]
        if not vals:
            return None
        return min(vals) if mode == "min" else max(vals)

    def mean(self, key: str) -> float | None:
        vals = [v for v in (_finite(r.get(key)) for r in self.records) if v is not None]
        return sum(vals) / len(vals) if vals else None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epoch, value) pairs for every record that has a finite ``key``."""
        xs: list[float] = []
        ys: list[float] = []
        for rec in self.records:
            v = _finite(rec.get(key))
            if v is not None:
                xs.append(float(rec["epoch"]))
                ys.append(v)
        return xs, ys

    def cfg(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


@dataclass(frozen=True)
class Spread:
    """One quantity over the seeds of an experiment: what a table cell shows and a verdict weighs."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        """Sample standard deviation; None for one seed, whose spread is unknown."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def sem(self) -> float | None:
        """Standard error of the mean."""
        return None if self.sd is None else self.sd / math.sqrt(self.n)


@dataclass
class RunGroup:
    """The runs of one experiment, one per seed (a single-seed report has one). Values are read per run
    and given as a :class:`Spread` over the runs that have them; plots and configs come from the first
    run that has records."""

    runs: Sequence[RunSummary]

    @property
    def present(self) -> list[RunSummary]:
        return [run for run in self.runs if run.exists]

    @property
    def exists(self) -> bool:
        return bool(self.present)

    @property
    def first(self) -> RunSummary:
        return (self.present or list(self.runs))[0]

    @property
    def run_dir(self) -> Path:
        return self.first.run_dir

    def spread(self, value: Callable[[RunSummary], float | None]) -> Spread | None:
        """``value`` of every run that has one; None if none has."""
        values = tuple(v for v in (value(run) for run in self.present) if v is not None)
        return Spread(values) if values else None

    def final(self, key: str) -> Spread | None:
        return self.spread(lambda run: run.final(key))

    def mean(self, key: str) -> Spread | None:
        return self.spread(lambda run: run.mean(key))

    def best(self, key: str, mode: str = "min") -> Spread | None:
        return self.spread(lambda run: run.best(key, mode))

    @property
    def n_params(self) -> Spread | None:
        return self.spread(lambda run: None if run.n_params is None else float(run.n_params))

    def epochs(self) -> Spread | None:
        return self.spread(lambda run: float(run.epochs))


PARAM_KEYS = ("n_params", "params", "num_params")
CHECKPOINT = Path("checkpoints") / "last.pt"


def count_checkpoint_params(path: Path) -> int | None:
    """Number of values in a checkpoint's floating-point weights (None if unreadable), for runs logged before
    the trainer recorded ``n_params``. Read with the one safe loader (tensors and plain containers only)."""
    import torch

    from neuralode.utils.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)["model"]
    except CheckpointError:  # a missing or damaged checkpoint only blanks this one cell
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None  # loadable but not a model's state dict: crafted or from another program
    return sum(v.numel() for v in state.values() if v.is_floating_point())


def load_run(run_dir: Path, *, with_params: bool = False) -> RunSummary:
    """Summary of ``run_dir``; ``with_params`` also reads the parameter count the trainer logs (older runs:
    counted from the checkpoint, loaded without unpickling code, since a run folder may come from anywhere).
    Damaged metrics give a summary without records whose ``damage`` says why."""
    run_dir = Path(run_dir)
    try:
        records = read_metrics(run_dir)
    except MetricsError as e:
        return RunSummary(run_dir=run_dir, damage=str(e))
    run = RunSummary(run_dir=run_dir, records=records, config=read_run_config(run_dir))
    if with_params and run.exists:
        logged = next((run.final(k) for k in PARAM_KEYS if run.final(k) is not None), None)
        if logged is not None and not (logged >= 1 and logged == int(logged)):
            logged = None  # a count that is no count: blank rather than print it
        run.n_params = int(logged) if logged is not None else count_checkpoint_params(run_dir / CHECKPOINT)
    return run
