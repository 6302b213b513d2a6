"""Reading run outputs: ``metrics.jsonl`` and the config Hydra saved beside it.

Everything the report shows comes from files on disk, so the report can be rebuilt without training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuralode.utils.files import read_jsonl

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl`` in file order; [] if the file is missing.

    A run killed while writing may leave a truncated last line: it is skipped rather than failing
    the whole report. If an epoch was logged twice (resumed run), the later record wins.
    """
    by_epoch: dict[Any, dict[str, Any]] = {}
    for rec in read_jsonl(Path(run_dir) / METRICS_FILE):
        by_epoch[rec.get("epoch", len(by_epoch))] = rec
    return list(by_epoch.values())


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
        for i, rec in enumerate(self.records):
            v = _finite(rec.get(key))
            if v is not None:
                xs.append(_finite(rec.get("epoch")) or float(i))
                ys.append(v)
        return xs, ys

    def cfg(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


PARAM_KEYS = ("n_params", "params", "num_params")
CHECKPOINT = Path("checkpoints") / "last.pt"


def count_checkpoint_params(path: Path) -> int | None:
    """Number of values in a checkpoint's floating-point weights (None if unreadable), for runs logged before
    the trainer recorded ``n_params``. Read with the one safe loader (tensors and plain containers only)."""
    from neuralode.utils.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)["model"]
    except CheckpointError:  # a missing or damaged checkpoint only blanks this one cell
        return None
    return sum(v.numel() for v in state.values() if v.is_floating_point())


def load_run(run_dir: Path, *, with_params: bool = False) -> RunSummary:
    """Summary of ``run_dir``; ``with_params`` also reads the parameter count the trainer logs (older runs:
    counted from the checkpoint, loaded without unpickling code, since a run folder may come from anywhere)."""
    run_dir = Path(run_dir)
    run = RunSummary(run_dir=run_dir, records=read_metrics(run_dir), config=read_run_config(run_dir))
    if with_params and run.exists:
        logged = next((run.final(k) for k in PARAM_KEYS if run.final(k) is not None), None)
        run.n_params = int(logged) if logged is not None else count_checkpoint_params(run_dir / CHECKPOINT)
    return run
