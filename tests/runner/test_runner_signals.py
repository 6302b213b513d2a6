"""Stops outside an epoch's batches: during the last evaluation, before training starts, between the jobs of a sweep,
and in a joblib sweep."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from runner_helpers import NEURALODE, SEARCHPATH, TOY, cli_env, run_main, toy_config

import neuralode.train as trainer
from neuralode.cli import main
from neuralode.utils.checkpoint import load_checkpoint
from neuralode.utils.interrupt import Interrupted, StopSignals

STOP_LINE = "neuralode {command}: stopped by {signal}; every run keeps its last checkpoint, and the same command resumes"


def test_a_stop_during_the_last_epochs_evaluation_ends_the_run_before_its_figures(tmp_path, monkeypatch):
    stop = StopSignals()
    measure = trainer.measure_evaluation

    def interrupted_evaluation(*args):
        stop.pending = signal.SIGINT  # what the handler records on Ctrl-C
        return measure(*args)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(trainer, "measure_evaluation", interrupted_evaluation)
        with pytest.raises(Interrupted, match=r"after epoch 1/1; .*last.pt keeps it, and the same command writes "
                                              r"the figures"):
            trainer._train(toy_config("trainer.epochs=1"), run_dir, stop, lambda: None)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run_dir / "figures").exists()
    trainer.train(toy_config("trainer.epochs=1"), run_dir)
    assert (run_dir / "figures" / "toy.txt").is_file()


def test_a_stop_during_a_sweep_jobs_last_evaluation_ends_the_sweep(tmp_path, monkeypatch, capsys):
    """The stop is not swallowed by the job's end: the sweep ends there, and its next job never starts."""
    measure = trainer.measure_evaluation

    def ctrl_c_while_evaluating(*args):
        os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler records it
        return measure(*args)

    monkeypatch.setattr(trainer, "measure_evaluation", ctrl_c_while_evaluating)
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", "-m", SEARCHPATH, *TOY, "trainer.epochs=1",
                         "seed=0,1", "hydra.sweep.dir=sweep")
    *_, job_line, last = err.strip().splitlines()
    assert code == 130 and last == STOP_LINE.format(command="train", signal="SIGINT") and "Traceback" not in err, err
    assert job_line.startswith("neuralode train: stopped by SIGINT after epoch 1/1; "), err
    assert sorted(p.name for p in (tmp_path / "sweep" / "toy").iterdir()) == ["seed=0"]
    assert load_checkpoint(tmp_path / "sweep" / "toy" / "seed=0" / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_second_ctrl_c_stops_at_once():
    """The first asks for a stop at the next safe point; the second ends the process by the signal's default action
    (checkpoints are written atomically, so that is safe: tests/runner/test_runner_crash.py)."""
    code = ("import os, signal, time\n"
            "from neuralode.utils.interrupt import StopSignals\n"
            "with StopSignals() as stop:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    print('pending', stop.pending == signal.SIGINT, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(60)\n"
            "    print('not stopped')\n")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGINT and done.stdout == "pending True\n", done
    assert done.stderr.strip().splitlines()[-1] == "SIGINT again: stopping now"


@pytest.mark.parametrize("command, target", [("train", "neuralode.train.validate"),
                                             ("eval", "neuralode.evaluate.evaluate_checkpoint")])
def test_ctrl_c_outside_the_trainer_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys, command, target):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["neuralode"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; monkeypatch restores it
    GlobalHydra.instance().clear()
    args = (SEARCHPATH, *TOY) if command == "train" else ("checkpoint=x",)
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 130 and err == [STOP_LINE.format(command=command, signal="SIGINT")]
    assert not list(tmp_path.glob("outputs/toy/*"))  # the stopped train command left no run dir


@pytest.mark.smoke
def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path):
    """Importing Hydra and torch takes seconds before any config is read. ``-X importtime`` lists each import as it
    ends: the signal goes once Hydra's modules have begun to load."""
    command = [sys.executable, "-X", "importtime", "-m", "neuralode", "train", SEARCHPATH, *TOY, "hydra.run.dir=run"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        before = []
        for line in proc.stderr:  # "import time: <self us> | <cumulative us> | <module>"
            before.append(line)
            if re.search(r"\|\s+hydra\b", line):
                break
        assert proc.poll() is None, "".join(before)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    err = [line for line in [*before, *rest.splitlines()] if line.strip() and not line.startswith("import time:")]
    assert proc.returncode == 130 and err == [STOP_LINE.format(command="train", signal="SIGINT")], "\n".join(err)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_between_the_jobs_of_a_sweep_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Between two jobs of the basic launcher no trainer handles the signal: Python's own handler raises
    KeyboardInterrupt in whatever Hydra is doing then (here, just after recording the first job)."""
    from neuralode.utils.sweep import SweepStatus, read_jobs

    job_end = SweepStatus.on_job_end

    def ctrl_c_after_the_first_job(self, config, job_return, **kwargs):
        job_end(self, config, job_return, **kwargs)
        if config.hydra.job.num == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SweepStatus, "on_job_end", ctrl_c_after_the_first_job)
    try:
        code, err = run_main(monkeypatch, capsys, tmp_path, "train", "-m", SEARCHPATH, *TOY, "trainer.epochs=1",
                             "seed=0,1", "hydra.sweep.dir=sweep")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C between the jobs of a sweep escaped neuralode train")
    *before, last = err.strip().splitlines()
    assert code == 130 and last == STOP_LINE.format(command="train", signal="SIGINT"), err
    assert len(before) == 1 and before[0].startswith("sweep: job #0 ") and "Traceback" not in err, err
    assert [job["num"] for job in read_jobs(tmp_path / "sweep")] == [0]  # the second job never started
    assert sorted(p.name for p in (tmp_path / "sweep" / "toy").iterdir()) == ["seed=0"]


def _group(pgid: int) -> set[int]:
    """The live (not zombie) processes of process group ``pgid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def _stop_a_joblib_sweep(tmp_path: Path, stop: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """Start a two-job joblib sweep in its own process group, ``stop`` it once both jobs train, and return its exit
    code and stderr once every process of the group (workers, resource trackers) is gone."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the joblib extra")
    args = ["train", "-m", SEARCHPATH, *TOY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "trainer.epochs=100", "task.step_delay=0.2", "seed=0,1"]
    proc = subprocess.Popen([str(NEURALODE), *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    locks = tmp_path / "outputs" / "multirun" / "toy"
    deadline = time.monotonic() + 600  # starting three Python processes that import torch, on a loaded machine
    while len(list(locks.glob("*/.lock"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # both jobs train
    assert proc.poll() is None and len(_group(proc.pid)) > 2, "the sweep ended before it could be stopped"
    stop(proc)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # killed workers are reaped by init once the sweep's process is gone
    assert not _group(proc.pid), f"left behind: {_group(proc.pid)}"
    return proc.returncode, stderr


def _assert_stopped_in_one_line(stderr: str, signal_name: str) -> None:
    """The sweep's own line once; the jobs' log and stop lines may come before it, but no traceback or warning
    (a worker killed with its semaphore made Python's resource tracker warn at exit)."""
    lines = stderr.strip().splitlines()
    assert lines.count(STOP_LINE.format(command="train", signal=signal_name)) == 1, stderr
    assert not [line for line in lines if "Traceback" in line or "Warning" in line or "warn" in line], stderr


@pytest.mark.smoke
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_sigterm_to_a_joblib_sweep_leaves_no_worker(tmp_path):
    code, stderr = _stop_a_joblib_sweep(tmp_path, lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 143, stderr
    _assert_stopped_in_one_line(stderr, "SIGTERM")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_ctrl_c_in_a_joblib_sweep_is_one_line_and_leaves_no_worker(tmp_path):
    """Ctrl-C at a terminal signals the whole foreground process group: the sweep and its workers at once."""
    code, stderr = _stop_a_joblib_sweep(tmp_path, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130, stderr
    _assert_stopped_in_one_line(stderr, "SIGINT")
