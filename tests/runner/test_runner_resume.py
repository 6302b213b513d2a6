"""SIGKILL mid-epoch, rerun the same command: training continues and every epoch is logged exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from runner_helpers import NEURALODE, SEARCHPATH, TOY, cli, cli_env

from neuralode.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.smoke


def epochs_logged(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.endswith("}")]


def test_sigkill_then_same_command_resumes(tmp_path: Path):
    # 4 batches x 0.1 s per epoch: long enough to land the kill inside epoch 3.
    args = ("train", SEARCHPATH, *TOY, "trainer.epochs=4", "task.step_delay=0.1")
    metrics = tmp_path / "outputs" / "toy" / "task.step_delay=0.1" / "metrics.jsonl"  # trainer.epochs is not in the name
    proc = subprocess.Popen([str(NEURALODE), *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a loaded machine starts slowly
        while len(epochs_logged(metrics)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.15)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = load_checkpoint(metrics.parent / "checkpoints" / "last.pt")["epoch"]
    assert 2 <= done < 4 and epochs_logged(metrics)[-1] <= done + 1

    rerun = cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"after epoch {done}" in rerun.stdout
    assert epochs_logged(metrics) == [1, 2, 3, 4]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_at_a_safe_point_with_one_line_and_the_same_command_resumes(tmp_path: Path, signum: int,
                                                                                 code: int):
    args = ("train", SEARCHPATH, *TOY, "trainer.epochs=4", "task.step_delay=0.1")
    metrics = tmp_path / "outputs" / "toy" / "task.step_delay=0.1" / "metrics.jsonl"  # trainer.epochs is not in the name
    proc = subprocess.Popen([str(NEURALODE), *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a loaded machine starts slowly
    while len(epochs_logged(metrics)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # inside epoch 2
    assert proc.poll() is None, "the run ended before it could be signalled"
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"neuralode train: stopped by {signal.Signals(signum).name} ")
    done = load_checkpoint(metrics.parent / "checkpoints" / "last.pt")["epoch"]
    assert f"keeps epoch {done}, and the same command resumes from it" in last
    assert epochs_logged(metrics) == list(range(1, done + 1)) and 1 <= done < 4

    rerun = cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert epochs_logged(metrics) == [1, 2, 3, 4]
