"""One process per run dir, and run dir names that stay inside outputs/ and within name limits."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from runner_helpers import toy_config

from neuralode.config import ConfigError, run_name
from neuralode.train import train
from neuralode.utils.metrics import MetricsFile
from neuralode.utils.rundir import MAX_NAME_BYTES, RunDirBusy, RunDirLock, safe_name


def test_a_second_run_into_a_busy_dir_is_refused_and_the_first_is_untouched(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(RunDirBusy, match=rf"in use by another training process \(pid {os.getpid()}\)"):
            train(toy_config("trainer.epochs=1"), run_dir)
        assert not (run_dir / "metrics.jsonl").exists()
    train(toy_config("trainer.epochs=1"), run_dir)  # released: the next run proceeds
    assert [r["epoch"] for r in MetricsFile(run_dir / "metrics.jsonl").records()] == [1]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    code = f"from neuralode.utils.rundir import RunDirLock; import os; RunDirLock({str(run_dir)!r}).__enter__(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (run_dir / ".lock").read_text().strip().isdigit()
    with RunDirLock(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


def test_names_stay_one_component_within_the_limit():
    assert safe_name("../../x") == "_._.._x"
    assert "/" not in safe_name("a/b") and not safe_name(".hidden").startswith(".")
    long = ",".join(f"model.option_number_{i}=value_{i}" for i in range(16))
    name = run_name(long)
    assert len(name.encode()) <= MAX_NAME_BYTES and name.startswith("model.option_number_0=value_0")
    assert run_name(long) == name and run_name(long + "x") != name  # stable and distinct
    assert run_name("") == "default" and run_name("+model.x=1") == "model.x=1"


def test_a_task_name_that_is_not_a_folder_name_is_refused(tmp_path):
    cfg = toy_config()
    cfg.task.name = "../../x"
    with pytest.raises(ConfigError, match=r"task.name='../../x' cannot name a folder"):
        train(cfg, tmp_path / "run")
