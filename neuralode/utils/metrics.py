"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per epoch) and the same values in TensorBoard, with
per-step scalars and the task's figures."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuralode.utils.files import named_os_error, read_jsonl, write_text_atomic
from neuralode.utils.records import MetricsError, read_epoch_records

log = logging.getLogger(__name__)

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
    "reg_kinetic": "regularize/kinetic",
    "reg_jacobian": "regularize/jacobian",
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
    """``metrics.jsonl``: appended once per epoch, made to match the checkpoint's epochs on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def restore(self, last_epoch: int, history: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Make the file hold exactly the records of epochs 1..``last_epoch`` (those a checkpoint holds).

        ``history``, the checkpoint's own records of those epochs, wins over the file, whose lines may be
        damaged or belong to a fresh start that never got its checkpoint. Without it (checkpoints written before
        it was kept) the file must hold every epoch, else :class:`MetricsError` names those it lacks and nothing
        changes. Lines that are not records are kept aside in ``metrics.jsonl.damaged``, with a warning. Returns
        the records the file now holds.
        """
        found = read_epoch_records(self.path)
        if history is None:
            missing = found.missing(last_epoch)
            if missing:
                damaged = f" (damaged lines: {', '.join(map(str, found.damaged))})" if found.damaged else ""
                raise MetricsError(f"{self.path} lacks the records of epochs {', '.join(map(str, missing))} of the "
                                   f"{last_epoch} the checkpoint holds{damaged}")
            history = sorted((r for r in found.records if r["epoch"] <= last_epoch), key=lambda r: r["epoch"])
        text = self.path.read_bytes().decode(errors="replace") if self.path.is_file() else ""
        if found.damaged:
            aside = self.path.with_name(self.path.name + ".damaged")
            lines = text.splitlines()
            with open(aside, "a") as f:
                f.write("".join(lines[n - 1] + "\n" for n in found.damaged))
            log.warning(f"{self.path}: lines {', '.join(map(str, found.damaged))} were damaged; kept aside in {aside}; "
                        f"the file keeps the records of epochs 1-{last_epoch}")
        restored = "".join(json_line(r) for r in history)
        if text != restored:
            write_text_atomic(self.path, restored)
        return history

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a") as f:
                f.write(json_line(record))  # one write: a kill leaves the line whole or cut, never interleaved
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise named_os_error(e, self.path) from e

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
        self.run_dir, self.first_epoch, self.first_step, self.every_steps = run_dir, first_epoch, first_step, every_steps
        self._writer: SummaryWriter | None = None
        self._step_writer: SummaryWriter | None = None
        # Step values wait for their epoch's checkpoint, as the epoch's own values do (see ``writer``).
        self._pending_steps: list[tuple[int, dict[str, float]]] = []

    @property
    def writer(self) -> SummaryWriter:
        """Opened with the first values to log, after their epoch's checkpoint: purge_step hides the events of
        epochs from first_epoch on, so an earlier start would hide an older run's curves even if it stopped
        before replacing that run."""
        if self._writer is None:
            self._writer = _summary_writer(self.run_dir, self.first_epoch)
        return self._writer

    def step_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.every_steps and step % self.every_steps == 0:
            self._pending_steps.append((step, {key: float(value) for key, value in values.items()}))

    def _flush_steps(self) -> None:
        if not self._pending_steps:
            return
        if self._step_writer is None:
            self._step_writer = _summary_writer(self.run_dir / "steps", self.first_step)
        for step, values in self._pending_steps:
            for key, value in values.items():
                self._step_writer.add_scalar(f"step/{key}", value, step)
        self._pending_steps.clear()

    def figures(self, paths: list[Path], epoch: int) -> None:
        """The PNG figures the task wrote, as TensorBoard images (tag ``figures/<file name>``)."""
        from matplotlib.image import imread

        for path in paths:
            if path.suffix == ".png":
                self.writer.add_image(f"figures/{path.stem}", imread(path), epoch, dataformats="HWC")
        self.writer.flush()

    def scalars(self, record: Mapping[str, Any], epoch: int) -> None:
        """An epoch's values, and the step values held since the last epoch (called after its checkpoint)."""
        self._flush_steps()
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
        for writer in (self._writer, self._step_writer):
            if writer is not None:
                writer.close()


def _summary_writer(log_dir: Path, purge_step: int) -> SummaryWriter:
    from torch.utils.tensorboard import SummaryWriter  # TensorBoard loads only for training

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


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
