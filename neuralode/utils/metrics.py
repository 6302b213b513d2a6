"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per epoch) and the same values in TensorBoard."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from neuralode.utils.files import read_jsonl, write_text_atomic

# metrics.jsonl key -> TensorBoard tag; other keys follow _tag()'s rule.
TAGS = {
    "train_loss": "loss/train",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "nfe_forward": "nfe/forward",
    "nfe_backward": "nfe/backward",
    "nfe_eval": "nfe/eval",
    "peak_memory_mb": "memory/peak_mb",
    "epoch_time_s": "time/epoch_s",
    "eval_time_s": "time/eval_s",
    "lr": "lr",
}


def _tag(key: str) -> str:
    """``train_rmse`` -> ``rmse/train``, ``test_nll`` -> ``nll/test``, anything else -> ``metrics/<key>``."""
    if key in TAGS:
        return TAGS[key]
    for split in ("train", "test", "val"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1:]}/{split}"
    return f"metrics/{key}"


class MetricsFile:
    """``metrics.jsonl``: appended once per epoch, cut back to a checkpoint's epoch on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate(self, last_epoch: int) -> None:
        """Keep only the records of epochs up to ``last_epoch`` (those the checkpoint contains)."""
        self.replace([r for r in self.records() if isinstance(r.get("epoch"), int) and r["epoch"] <= last_epoch])

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json_line(record))  # one write: a kill leaves the line whole or cut, never interleaved
            f.flush()
            os.fsync(f.fileno())

    def replace(self, records: list[Mapping[str, Any]]) -> None:
        """Atomically make ``records`` the whole file (a fresh start over an older run's lines)."""
        write_text_atomic(self.path, "".join(json_line(r) for r in records))


def json_line(record: Mapping[str, Any]) -> str:
    """Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers are written as null."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class TensorBoardLog:
    """Scalars per epoch plus one hparams entry (flattened config with the final metrics) in the run dir."""

    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        # purge_step hides events of epochs a killed run logged after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_epoch)

    def scalars(self, record: Mapping[str, Any], epoch: int) -> None:
        for key, value in record.items():
            if key != "epoch" and _is_number(value):
                self.writer.add_scalar(_tag(key), float(value), epoch)
        self.writer.flush()

    def hparams(self, config: Mapping[str, Any], final: Mapping[str, Any]) -> None:
        params = {k: _hparam_value(v) for k, v in flatten(config).items()}
        metrics = {_tag(k): float(v) for k, v in final.items() if k != "epoch" and _is_number(v)}
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)  # None, lists: TensorBoard takes only scalars and strings
