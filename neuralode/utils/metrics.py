"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per epoch) and the same values in TensorBoard, with
per-step scalars and the task's figures."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuralode.utils.files import read_jsonl, write_text_atomic

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

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
    """Scalars per epoch, the task's figures and one hparams entry (flattened config with the final metrics) in
    the run dir; per-step scalars every ``every_steps`` steps in ``<run dir>/steps`` (steps and epochs are
    different x axes)."""

    def __init__(self, run_dir: Path, first_epoch: int, first_step: int = 1, every_steps: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard loads only for training

        # purge_step hides events of epochs (steps) a killed run logged after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_epoch)
        self.every_steps = every_steps
        self.step_writer: SummaryWriter | None = None
        if every_steps:
            self.step_writer = SummaryWriter(log_dir=str(Path(run_dir) / "steps"), purge_step=first_step)

    def step_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.step_writer is not None and step % self.every_steps == 0:
            for key, value in values.items():
                self.step_writer.add_scalar(f"step/{key}", float(value), step)

    def figures(self, paths: list[Path], epoch: int) -> None:
        """The PNG figures the task wrote, as TensorBoard images (tag ``figures/<file name>``)."""
        from matplotlib.image import imread

        for path in paths:
            if path.suffix == ".png":
                self.writer.add_image(f"figures/{path.stem}", imread(path), epoch, dataformats="HWC")
        self.writer.flush()

    def scalars(self, record: Mapping[str, Any], epoch: int) -> None:
        for key, value in record.items():
            if key != "epoch" and _is_number(value):
                self.writer.add_scalar(_tag(key), float(value), epoch)
        self.writer.flush()

    def hparams(self, config: Mapping[str, Any], final: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = {k: _hparam_value(v) for k, v in flatten(config).items()}
        metrics = {_tag(k): float(v) for k, v in final.items() if k != "epoch" and _is_number(v)}
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self.step_writer is not None:
            self.step_writer.close()


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
