"""Every crash point of an epoch's writes, and of a ``trainer.resume=false`` restart over an older run, leaves a
pair that the plain command resumes into metrics.jsonl == the checkpoint's records of its epochs; a damaged
metrics line is restored from the checkpoint (and kept aside), never silently dropped."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from runner_helpers import toy_config, without_timings

from neuralode.train import train
from neuralode.utils import files
from neuralode.utils.checkpoint import load_checkpoint, save_checkpoint
from neuralode.utils.metrics import MetricsFile, json_line
from neuralode.utils.records import MetricsError


class Crash(BaseException):
    """A kill -9 at one point: nothing after it runs (not even ``finally`` blocks' file writes matter)."""


def crash_at(monkeypatch: pytest.MonkeyPatch, crash: int | None) -> list[str]:
    """Number the trainer's file steps (each rename before and after, each metrics append, each unlink of a
    checkpoint) and raise :class:`Crash` at step ``crash``; an append crashes half-written. Returns the steps."""
    steps: list[str] = []

    def step(name: str) -> None:
        if len(steps) == crash:
            raise Crash(name)
        steps.append(name)

    real_replace, real_append, real_unlink = os.replace, MetricsFile.append, Path.unlink

    def replace(src: str, dst: str) -> None:
        step(f"before renaming {Path(dst).name}")
        real_replace(src, dst)
        step(f"after renaming {Path(dst).name}")

    def append(self: MetricsFile, record: dict) -> None:
        if len(steps) == crash:
            with open(self.path, "a") as f:
                f.write(json_line(record)[:25])
            raise Crash("half of a metrics line")
        real_append(self, record)
        step("after appending")

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == "last.pt":
            step("before removing last.pt")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(MetricsFile, "append", append)
    monkeypatch.setattr(Path, "unlink", unlink)
    return steps


def assert_consistent(run_dir: Path) -> list[dict]:
    """metrics.jsonl holds exactly the checkpoint's epochs: its records, or (an older checkpoint) one line each."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    records = MetricsFile(run_dir / "metrics.jsonl").records()
    assert [r["epoch"] for r in records] == list(range(1, ckpt["epoch"] + 1))
    if "history" in ckpt:
        assert (run_dir / "metrics.jsonl").read_text() == "".join(json_line(r) for r in ckpt["history"])
    return records


def number_of_steps(monkeypatch: pytest.MonkeyPatch, prepare, command: tuple[str, ...], run_dir: Path) -> int:
    prepare(run_dir)
    with monkeypatch.context() as m:
        steps = crash_at(m, None)
        train(toy_config(*command), run_dir)
    return len(steps)


def crash_and_resume(monkeypatch, tmp_path: Path, prepare, command: tuple[str, ...], resume: tuple[str, ...]) -> None:
    """For each step of ``command`` (run after ``prepare``): crash there, rerun ``resume``, check the pair."""
    total = number_of_steps(monkeypatch, prepare, command, tmp_path / "count")
    assert total >= 4
    for crash in range(total):
        run_dir = tmp_path / f"crash{crash}"
        prepare(run_dir)
        with monkeypatch.context() as m:
            crash_at(m, crash)
            with pytest.raises(Crash):
                train(toy_config(*command), run_dir)
        train(toy_config(*resume), run_dir)
        assert_consistent(run_dir)


def test_every_crash_point_of_an_epoch_resumes_to_the_uninterrupted_metrics(monkeypatch, tmp_path):
    straight = tmp_path / "straight"
    train(toy_config("trainer.epochs=3"), straight)
    expected = without_timings(assert_consistent(straight))

    def prepare(run_dir: Path) -> None:
        train(toy_config("trainer.epochs=1"), run_dir)

    crash_and_resume(monkeypatch, tmp_path, prepare, ("trainer.epochs=3",), ("trainer.epochs=3",))
    for run_dir in tmp_path.glob("crash*"):
        assert without_timings(MetricsFile(run_dir / "metrics.jsonl").records()) == expected


@pytest.mark.parametrize("with_history", [True, False], ids=["checkpoint", "older-checkpoint"])
def test_every_crash_point_of_a_fresh_start_over_an_older_run_leaves_a_consistent_pair(monkeypatch, tmp_path,
                                                                                       with_history):
    def prepare(run_dir: Path) -> None:
        train(toy_config("trainer.epochs=3"), run_dir)
        if not with_history:  # as written before checkpoints kept their records
            path = run_dir / "checkpoints" / "last.pt"
            ckpt = load_checkpoint(path)
            del ckpt["history"]
            save_checkpoint(path, ckpt)

    # The plain rerun after the kill: trainer.epochs=1 says "nothing to train" if the older run's checkpoint is
    # still the one there, and must then show all of that run's epochs.
    crash_and_resume(monkeypatch, tmp_path, prepare, ("trainer.epochs=1", "trainer.resume=false"),
                     ("trainer.epochs=1",))


def test_a_damaged_line_is_restored_from_the_checkpoint_and_kept_aside(train_toy, caplog):
    straight, _ = train_toy("trainer.epochs=4", name="straight")
    run_dir, _ = train_toy("trainer.epochs=2")
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1][:30] + "\n")
    _, records = train_toy("trainer.epochs=4")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert without_timings(records) == without_timings(MetricsFile(straight / "metrics.jsonl").records())
    assert (run_dir / "metrics.jsonl.damaged").read_text() == lines[1][:30] + "\n"
    assert "lines 2 were damaged; kept aside in" in caplog.text


def test_without_the_checkpoints_records_a_missing_epoch_refuses_the_resume(train_toy):
    run_dir, _ = train_toy("trainer.epochs=2")
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["history"]
    save_checkpoint(path, ckpt)
    metrics = run_dir / "metrics.jsonl"
    damaged = metrics.read_text()[:-40] + "\n"
    metrics.write_text(damaged)
    with pytest.raises(MetricsError, match=r"lacks the records of epochs 2 of the 2 the checkpoint holds "
                                           r"\(damaged lines: 2\); put the missing lines back"):
        train_toy("trainer.epochs=3")
    assert metrics.read_text() == damaged and load_checkpoint(path)["epoch"] == 2


def test_a_stopped_fresh_start_keeps_the_older_runs_tensorboard_curves(train_toy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import neuralode.train as trainer
    from neuralode.utils.interrupt import Interrupted, StopSignals

    class StopAtOnce(StopSignals):
        def check(self, where: str) -> None:
            raise Interrupted(2, where)

    run_dir, _ = train_toy("trainer.epochs=2")
    with pytest.raises(Interrupted):
        trainer._train(toy_config("trainer.epochs=2", "trainer.resume=false"), run_dir, StopAtOnce(), lambda: None)
    events = EventAccumulator(str(run_dir)).Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
