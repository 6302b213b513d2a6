"""Training that cannot go on stops with one line naming the cause and keeps the last good state."""
from __future__ import annotations

import json
import math

import pytest
from runner_helpers import toy_config

from neuralode.config import ConfigError
from neuralode.train import TrainingError, train
from neuralode.utils.checkpoint import load_checkpoint
from neuralode.utils.metrics import MetricsFile, json_line


def test_a_diverging_run_stops_names_the_learning_rate_and_keeps_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(TrainingError) as err:
        train(toy_config("trainer.epochs=3", "task.lr=1e30", "trainer.resume=false"), run_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith("epoch ")
    assert "task.lr=1e+30" in message and "learning rate" in message
    # The fresh start failed before its first epoch: the earlier run is left whole.
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    assert [r["epoch"] for r in MetricsFile(run_dir / "metrics.jsonl").records()] == [1]


def test_the_step_cap_names_the_tolerance_and_max_num_steps(tmp_path):
    with pytest.raises(TrainingError, match=r"epoch 1/1 failed: .*rtol 1e-05.*solver.tol.*max_num_steps.*no epoch was completed"):
        train(toy_config("trainer.epochs=1", "solver.tol=1e-5", "++solver.options.max_num_steps=1"), tmp_path / "run")


def test_metrics_lines_are_strict_json():
    line = json_line({"epoch": 1, "train_loss": math.nan, "x": math.inf, "ok": 0.5})
    assert json.loads(line) == {"epoch": 1, "train_loss": None, "x": None, "ok": 0.5}
    assert "NaN" not in line and "Infinity" not in line and line.endswith("}\n")


def test_a_tolerance_below_float32_precision_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"solver.tol=1e-12 is below what float32 can resolve"):
        train(toy_config("solver.tol=1e-12"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_parameter_count_is_logged(tmp_path):
    train(toy_config("trainer.epochs=1"), tmp_path / "run")
    (record,) = MetricsFile(tmp_path / "run" / "metrics.jsonl").records()
    assert record["n_params"] == 2 * 16 + 16 + 16 * 2 + 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["metrics"]["n_params"] == record["n_params"]


def test_a_non_finite_loss_stops_before_the_optimiser_step(tmp_path, monkeypatch):
    import toy_task

    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    real_step = toy_task.ToyTask.training_step

    def nan_loss(self, batch):
        out = real_step(self, batch)
        out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(toy_task.ToyTask, "training_step", nan_loss)
    with pytest.raises(TrainingError) as err:
        train(toy_config("trainer.epochs=2"), run_dir)
    assert "the training loss is nan at step 1" in str(err.value) and "lower the learning rate" in str(err.value)
    assert "keeps epoch 1, and the same command resumes from it" in str(err.value)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_fresh_start_with_a_bad_option_is_refused_before_touching_the_older_run(tmp_path):
    """The issue's repro: finish a run, rerun it with trainer.resume=false and a bogus solver option."""
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=2"), run_dir)
    metrics = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"solver.options: 'bogus' is not an option of method 'dopri5'"):
        train(toy_config("trainer.epochs=2", "trainer.resume=false", "++solver.options.bogus=1"), run_dir)
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


def test_an_unwritable_checkpoint_folder_is_found_before_training(tmp_path, monkeypatch):
    """As root every folder is writable, so the check is exercised by making os.access say no."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).endswith("checkpoints") else
                        real_access(path, mode))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(PermissionError, match=r"checkpoints is not writable, so no checkpoint could be saved"):
        train(toy_config("trainer.epochs=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unwritable_run_dir_is_named_not_hydras_logging_handler():
    from neuralode.cli import describe_error

    try:
        try:
            raise PermissionError(13, "Permission denied", "/runs/x/train.log")
        except PermissionError as e:
            raise ValueError("Unable to configure handler 'file'") from e
    except ValueError as error:
        message = describe_error(error)
    assert "Permission denied: '/runs/x/train.log'" in message and "hydra.run.dir" in message
    assert "Unable to configure" not in message


def test_a_stop_before_the_first_epoch_says_the_command_starts_over(tmp_path):
    from neuralode.utils.interrupt import Interrupted, StopSignals

    class StopAtOnce(StopSignals):
        def check(self, where: str) -> None:
            raise Interrupted(2, where)

    import neuralode.train as trainer

    with pytest.raises(Interrupted, match=r"during epoch 1/1, which is dropped; no epoch was completed, so the "
                                          r"same command starts over"):
        trainer._train(toy_config("trainer.epochs=1"), tmp_path / "run", StopAtOnce(), lambda: None)


@pytest.mark.parametrize("full", ["checkpoints/last.pt", "metrics.jsonl"])
def test_a_full_disk_names_the_file_and_what_is_kept(tmp_path, monkeypatch, full):
    import errno
    import os

    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # ENOSPC from a write or fsync names no file; the message must
        if os.readlink(f"/proc/self/fd/{fd}").endswith((f"{full}.tmp", full)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        ckpt = run_dir / "checkpoints" / "last.pt"
        with pytest.raises(OSError, match=rf"epoch 2/2 could not be saved \(No space left on device: {run_dir / full}\); "
                                          rf"{ckpt} keeps epoch 1, and the same command resumes from it once there"):
            train(toy_config("trainer.epochs=2"), run_dir)
    assert not (run_dir / "checkpoints" / "last.pt.tmp").exists()
    train(toy_config("trainer.epochs=2"), run_dir)
    assert [r["epoch"] for r in MetricsFile(run_dir / "metrics.jsonl").records()] == [1, 2]


def test_our_own_errors_keep_their_message_over_the_os_error_beneath():
    from neuralode.cli import describe_error
    from neuralode.data.mnist import DataError

    try:
        try:
            raise PermissionError(13, "Permission denied", "/home/u/.cache/neuralode")
        except PermissionError as e:
            raise DataError("could not download mnist into /home/u/.cache/neuralode (Permission denied); pass "
                            "data.root=<folder with the four IDX files>") from e
    except DataError as error:
        message = describe_error(error)
    assert message.startswith("could not download mnist") and "hydra.run.dir" not in message


@pytest.mark.parametrize("name", ["it's a run", 'a "run"', "two\nlines", "ends in \\", "\\'", "'", "a\\\\'b",
                                  "'half quoted"])
def test_a_path_is_taken_verbatim(name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from neuralode.cli import rewrite_override

    for key, command in (("hydra.run.dir", "train"), ("checkpoint", "eval")):
        assert OverridesParser.create().parse_override(rewrite_override(f"{key}={name}", command)).value() == name


def test_a_run_dir_with_quotes_spaces_a_newline_and_backslashes_needs_no_quoting(tmp_path):
    from runner_helpers import SEARCHPATH, TOY, cli

    name = 'it\'s a "run"\nwith \\ and \\'
    result = cli("train", SEARCHPATH, *TOY, "trainer.epochs=1", f"hydra.run.dir={name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / name / "metrics.jsonl").is_file()


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tmp_path):
    from neuralode.utils.checkpoint import CheckpointError

    (tmp_path / "run" / "checkpoints" / "last.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"last.pt is not a file, so no checkpoint can be saved there"):
        train(toy_config("trainer.epochs=1", "trainer.resume=false"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
