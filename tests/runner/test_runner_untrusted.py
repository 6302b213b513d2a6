"""A checkpoint is a file from anywhere: nothing it holds selects code, and a damaged or crafted one is refused
in one line by every entry point (train's resume, eval, figure3, the report's loaders, make reproduce)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from runner_helpers import cli, toy_config

from neuralode.evaluate import evaluate_checkpoint
from neuralode.report import figure3
from neuralode.report.plan import DataChoice
from neuralode.report.reproduce import Reproduction
from neuralode.report.runs import count_checkpoint_params
from neuralode.train import train
from neuralode.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

PAYLOAD = "neuralode_test_payload"


@pytest.fixture
def payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on the import path (of this process and its children) that leaves a file when it is imported."""
    folder = tmp_path / "payload"
    folder.mkdir()
    marker = folder / "ran"
    (folder / f"{PAYLOAD}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                          "def build(cfg, device, solver):\n    raise SystemExit('payload built')\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{os_pythonpath()}")
    yield marker
    sys.modules.pop(PAYLOAD, None)


def os_pythonpath() -> str:
    import os

    return os.environ.get("PYTHONPATH", "")


@pytest.fixture
def crafted(train_toy, payload: Path) -> Path:
    """A trained run whose checkpoint's config names the payload as its task module."""
    run_dir, _ = train_toy("trainer.epochs=1")
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["config"]["task"]["module"] = PAYLOAD
    save_checkpoint(path, ckpt)
    return run_dir


def test_eval_and_restore_never_import_a_module_the_checkpoint_names(crafted: Path, payload: Path):
    for task_module in (None, "toy_task"):
        with pytest.raises(CheckpointError, match=f"names the plug-in task module '{PAYLOAD}', and no module is "
                                                  "imported on a file's word"):
            evaluate_checkpoint(crafted, task_module=task_module)
    assert not payload.exists()


def test_train_resume_refuses_it_before_building_anything(crafted: Path, payload: Path):
    metrics = (crafted / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=f"cannot resume: .*names the plug-in task module '{PAYLOAD}'"):
        train(toy_config("trainer.epochs=2"), crafted)
    assert not payload.exists() and (crafted / "metrics.jsonl").read_text() == metrics


def test_the_eval_command_refuses_it_in_one_line(crafted: Path, payload: Path, tmp_path: Path):
    result = cli("eval", f"checkpoint={crafted}", "task_module=toy_task", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "no module is imported on a file's word" in lines[0]
    assert not payload.exists()


def test_figure3_and_make_reproduce_refuse_it(crafted: Path, payload: Path, tmp_path: Path, capsys):
    assert figure3.main([str(crafted)]) == 2
    assert "no module is imported on a file's word" in capsys.readouterr().err
    runs = tmp_path / "runs"
    (runs / "table1").mkdir(parents=True)
    crafted.rename(runs / "table1" / "odenet")
    reproduction = Reproduction("smoke", runs, DataChoice("fashion_mnist", str(tmp_path)), "make reproduce", None)
    assert reproduction._figure3(1) is False  # both measurements fail, in their own processes
    assert reproduction.state["runs"]["figure3"]["rc"] == 2
    assert not payload.exists()


def test_the_reports_parameter_count_reads_only_weights(crafted: Path, payload: Path):
    assert count_checkpoint_params(crafted / "checkpoints" / "last.pt") > 0
    assert not payload.exists()


def test_an_invalid_saved_config_is_refused_before_anything_is_built(train_toy):
    run_dir, _ = train_toy("trainer.epochs=1")
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["config"]["solver"]["method"] = "no_such_method"
    save_checkpoint(path, ckpt)
    with pytest.raises(CheckpointError, match=r"holds an invalid config \(solver.method='no_such_method' is unknown"):
        evaluate_checkpoint(run_dir, task_module="toy_task")


def _altered(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("epoch"), "is not a neuralode checkpoint"),
    (lambda c: c.update(epoch="two"), "its epoch is 'two', not a whole number >= 1"),
    (lambda c: c.update(config="task: toy"), "its config is not a dict with task.name"),
    (lambda c: c.update(model={"w": 1}), "its model entry is not a dict of named tensors"),
    (lambda c: c.update(history=c["history"][:0]), "its metrics history is not one record per epoch 1..1"),
    (lambda c: c["rng"].update(torch=torch.zeros(3)), "does not fit this run: its RNG state cannot be restored"),
    (lambda c: c["model"].pop(next(iter(c["model"]))), "its model weights cannot be restored"),
    (lambda c: c["optimizer"].update(param_groups=[]), "its optimizer state cannot be restored"),
])
def test_a_crafted_checkpoint_is_one_clear_error_on_resume(train_toy, change, message):
    run_dir, _ = train_toy("trainer.epochs=1")
    path = run_dir / "checkpoints" / "last.pt"
    _altered(path, change)
    with pytest.raises(CheckpointError, match=message):
        train(toy_config("trainer.epochs=2"), run_dir)


def test_a_crafted_checkpoint_under_eval_is_exit_2_in_one_line(train_toy, tmp_path: Path):
    run_dir, _ = train_toy("trainer.epochs=1")
    _altered(run_dir / "checkpoints" / "last.pt", lambda c: c["model"].update(extra=torch.zeros(1)))
    result = cli("eval", f"checkpoint={run_dir}", "task_module=toy_task", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "its model weights cannot be restored (Error(s) in loading state_dict" in lines[0]
