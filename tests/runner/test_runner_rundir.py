"""One process per run dir, and run dir names that stay inside outputs/ and within name limits."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from runner_helpers import NEURALODE, SEARCHPATH, TOY, cli, cli_env, run_main, toy_config

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


def test_a_finished_run_leaves_no_lock_and_a_removed_lock_is_not_shared(tmp_path):
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    assert not (run_dir / ".lock").exists()
    first = RunDirLock(run_dir).__enter__()
    stale = os.open(run_dir / ".lock", os.O_RDWR)  # opened by a second process just before the holder ends
    first.__exit__(None, None, None)
    with RunDirLock(run_dir):  # a third process: locks a fresh file
        import fcntl

        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the second gets the old, removed file's lock ...
        with pytest.raises(RunDirBusy):  # ... which RunDirLock does not take for the run dir's
            RunDirLock(run_dir).__enter__()
    os.close(stale)


def _hydra_record(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").iterdir())}


def test_a_refused_command_changes_nothing_in_the_run_dir(tmp_path):
    run = cli("train", SEARCHPATH, *TOY, "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run_dir = tmp_path / "run"
    record = _hydra_record(run_dir)
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"} and b"name: toy" in record["config.yaml"]
    files_before = sorted(p.name for p in run_dir.iterdir())
    refused = cli("train", SEARCHPATH, *TOY, "trainer.epochs=2", "task.hidden=8", "hydra.run.dir=run", cwd=tmp_path)
    assert refused.returncode == 2 and "holds a checkpoint of another run" in refused.stderr
    with RunDirLock(run_dir):  # another process trains there
        busy = cli("train", SEARCHPATH, *TOY, "trainer.epochs=2", "hydra.run.dir=run", cwd=tmp_path)
    assert busy.returncode == 2 and "is in use by another training process" in busy.stderr
    assert _hydra_record(run_dir) == record and sorted(p.name for p in run_dir.iterdir()) == files_before


def test_a_rejected_command_leaves_no_run_dir_and_never_removes_a_folder_it_did_not_create(tmp_path):
    foreign = tmp_path / "foreign"  # another Hydra app's output, say
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "config.yaml").write_text("theirs: 1\n")
    (foreign / "train.log").write_text("their log\n")
    (foreign / "notes.txt").write_text("keep me\n")
    for run_dir, bad in ((foreign, "solver.tol=-1"), (tmp_path / "outputs" / "new", "solver.tol=-1"),
                         (tmp_path / "outputs" / "no_data", "data.root=/nonexistent")):
        task = TOY if "data" not in bad else ("task=mnist", "profile=smoke", "data.download=false")
        result = cli("train", SEARCHPATH, *task, bad, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in foreign.rglob("*")) == [".hydra", "config.yaml", "notes.txt", "train.log"]
    assert (foreign / "train.log").read_text() == "their log\n"
    assert not (tmp_path / "outputs" / "new").exists() and not (tmp_path / "outputs" / "no_data").exists()


def test_lines_logged_before_a_command_is_accepted_reach_train_log_only_once_it_is(tmp_path, monkeypatch, capsys):
    """A library's warning while the task is built (matplotlib's, with an unwritable HOME) would create train.log,
    which kept a refused command's new run dir, or add to an existing run's log."""
    import toy_task

    build = toy_task.build

    def build_after_a_warning(cfg, device, solver):
        logging.getLogger("some_library").warning("a library's warning")
        if cfg.task.hidden == 8:
            raise ConfigError("task.hidden=8 is refused by the task")
        return build(cfg, device, solver)

    monkeypatch.setattr(toy_task, "build", build_after_a_warning)
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "task.hidden=8", "hydra.run.dir=new")
    assert code == 2 and "task.hidden=8 is refused by the task" in err
    assert not (tmp_path / "new").exists()
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "trainer.epochs=1", "hydra.run.dir=run")
    assert code == 0, err
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.index("a library's warning") < log.index("epoch 1/1")  # held, then written once accepted
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "trainer.epochs=1", "task.hidden=8",
                         "trainer.resume=false", "hydra.run.dir=run")
    assert code == 2 and (tmp_path / "run" / "train.log").read_text() == log


def test_held_lines_of_a_refused_command_are_dropped_even_at_exit(tmp_path):
    from logging.handlers import MemoryHandler

    from neuralode.cli import _file_log_held

    root, log = logging.getLogger(), tmp_path / "train.log"
    file_handler = logging.FileHandler(log, delay=True)
    root.addHandler(file_handler)
    try:
        with _file_log_held():
            logging.getLogger("some_library").warning("held")
            buffers = [handler for handler in root.handlers if isinstance(handler, MemoryHandler)]
        for buffer in buffers:
            buffer.flush()  # what logging.shutdown() does at exit to every handler still referenced
        assert buffers and not log.exists()
        with _file_log_held() as release:
            logging.getLogger("some_library").warning("kept")
            release()
            logging.getLogger("some_library").warning("then written as it comes")
        assert log.read_text() == "kept\nthen written as it comes\n"
    finally:
        root.removeHandler(file_handler)
        file_handler.close()


def test_an_unwritable_home_is_named_and_leaves_no_run_dir(tmp_path):
    """HOME a file (as root, the one way to make it unwritable): matplotlib warns while the task is built, and the
    download into ~/.cache fails; the command says where it could not download and what to pass instead."""
    home = tmp_path / "home"
    home.write_text("not a folder\n")
    env = {**cli_env(), "HOME": str(home)}
    for key in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env.pop(key, None)
    result = subprocess.run([str(NEURALODE), "train", "task=mnist", "data=fashion_mnist", "profile=smoke",
                             "hydra.run.dir=run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith("neuralode train: error: could not download fashion_mnist into "
                                                      f"{home}/.cache/neuralode/data"), result.stderr
    assert "Not a directory" in line and "pass data.root=<folder with the four IDX files>" in line
    assert "hydra.run.dir" not in line and not (tmp_path / "run").exists()


def test_an_empty_run_dir_is_refused_not_the_current_directory(tmp_path):
    result = cli("train", SEARCHPATH, *TOY, "trainer.epochs=1", "hydra.run.dir=", cwd=tmp_path)
    assert result.returncode == 2 and "hydra.run.dir is empty" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_second_sweep_into_a_busy_sweep_dir_is_refused_and_its_jobs_file_untouched(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "jobs.jsonl").write_text('{"num": 0}\n')
    with RunDirLock(sweep_dir):  # the first sweep, running
        second = cli("train", "-m", SEARCHPATH, *TOY, "trainer.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    assert second.returncode == 2 and "sweep is in use by another sweep" in second.stderr.splitlines()[-1]
    assert (sweep_dir / "jobs.jsonl").read_text() == '{"num": 0}\n' and not (sweep_dir / "toy").exists()
    done = cli("train", "-m", SEARCHPATH, *TOY, "trainer.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len((sweep_dir / "jobs.jsonl").read_text().splitlines()) == 2 and not (sweep_dir / ".lock").exists()
