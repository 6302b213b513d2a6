"""How a run reports: progress bars only on a terminal, one line per epoch elsewhere and per job in a sweep;
a longer trainer.epochs continues the same run dir; TensorBoard gets the tolerances used, the figures and
per-step scalars."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from runner_helpers import SEARCHPATH, TOY, cli, toy_config

from neuralode.train import show_progress_bars, train
from neuralode.utils.metrics import MetricsFile

QUIET_TOY = tuple(o for o in TOY if not o.startswith("trainer.progress"))  # the default: trainer.progress=auto


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_draws_bars_only_on_a_terminal():
    assert show_progress_bars("auto", Terminal()) and not show_progress_bars("auto", io.StringIO())
    assert show_progress_bars(True, io.StringIO()) and not show_progress_bars(False, Terminal())


@pytest.mark.smoke
def test_a_logged_run_writes_one_line_per_epoch_and_no_bars(tmp_path: Path):
    result = cli("train", SEARCHPATH, *QUIET_TOY, "trainer.epochs=3", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr  # no bar redraws
    assert [line.split("]")[1].split()[:2] for line in result.stdout.splitlines() if " epoch " in line] == [
        ["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]


@pytest.mark.smoke
def test_each_line_of_a_sweep_names_its_job(tmp_path: Path):
    result = cli("train", "-m", SEARCHPATH, *QUIET_TOY, "trainer.epochs=1", "seed=1,2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    epochs = [line for line in result.stdout.splitlines() if "epoch 1/1" in line]
    assert len(epochs) == 2 and all("job #" in line and "seed=" in line for line in epochs)
    assert "\r" not in result.stdout + result.stderr


@pytest.mark.smoke
def test_the_same_command_with_more_epochs_continues_in_the_same_dir(tmp_path: Path):
    first = cli("train", SEARCHPATH, *TOY, "trainer.epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "outputs" / "toy").iterdir()
    epoch_1 = MetricsFile(run_dir / "metrics.jsonl").records()
    longer = cli("train", SEARCHPATH, *TOY, "trainer.epochs=2", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert [p.name for p in (tmp_path / "outputs" / "toy").iterdir()] == [run_dir.name]
    assert f"resuming {run_dir} after epoch 1" in longer.stdout
    records = MetricsFile(run_dir / "metrics.jsonl").records()
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == epoch_1[0]  # epoch 1 logged once, kept


def test_tensorboard_gets_the_tolerances_used_the_figures_and_step_scalars(tmp_path: Path, monkeypatch):
    from matplotlib.figure import Figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from toy_task import ToyTask

    def save_png(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        Figure(figsize=(2, 2)).savefig(out_dir / "curve.png")
        return [out_dir / "curve.png"]

    monkeypatch.setattr(ToyTask, "save_figures", save_png)
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=2", "trainer.log_every_steps=2"), run_dir)  # 4 steps per epoch, tol null

    events = EventAccumulator(str(run_dir)).Reload()
    assert events.Tags()["images"] == ["figures/curve"]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["solver.tol"].number_value == hparams["solver.rtol"].number_value == 1e-3  # the task's default
    steps = EventAccumulator(str(run_dir / "steps")).Reload()
    assert {"step/loss", "step/lr", "step/nfe_forward", "step/nfe_backward"} <= set(steps.Tags()["scalars"])
    assert [e.step for e in steps.Scalars("step/loss")] == [2, 4, 6, 8]
    assert json.loads(json.dumps(MetricsFile(run_dir / "metrics.jsonl").records()))[-1]["epoch"] == 2
