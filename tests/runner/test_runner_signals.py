"""Stops outside an epoch's batches: during the last evaluation, before training starts, and in a joblib sweep."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from runner_helpers import NEURALODE, SEARCHPATH, TOY, cli_env, toy_config

import neuralode.train as trainer
from neuralode.cli import main
from neuralode.utils.checkpoint import load_checkpoint
from neuralode.utils.interrupt import Interrupted, StopSignals


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
    assert exit_info.value.code == 130 and err == [f"neuralode {command}: stopped by SIGINT; every run keeps its "
                                                   "last checkpoint, and the same command resumes"]
    assert not list(tmp_path.glob("outputs/toy/*"))  # the stopped train command left no run dir


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.smoke
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_sigterm_to_a_joblib_sweep_leaves_no_worker(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the joblib extra")
    args = ["train", "-m", SEARCHPATH, *TOY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "trainer.epochs=100", "task.step_delay=0.2", "seed=0,1"]
    proc = subprocess.Popen([str(NEURALODE), *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    locks = tmp_path / "outputs" / "multirun" / "toy"
    deadline = time.monotonic() + 300
    while len(list(locks.glob("*/.lock"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # both jobs train
    workers = _children(proc.pid)
    assert proc.poll() is None and workers, "the sweep ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("neuralode train: stopped by SIGTERM"), stderr
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # killed workers are reaped by init once the sweep's process is gone
    assert not any(_alive(pid) for pid in workers)
