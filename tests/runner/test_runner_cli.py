"""The ``neuralode`` command: help, one-line errors, and ``eval`` on a trained run.

Subprocess runs cost a torch import each (seconds on a shared CPU), so most error cases call
``neuralode.cli.main`` in-process -- the same function the console script runs.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from runner_helpers import SEARCHPATH, TOY, cli, run_main, toy_config

from neuralode.cli import main
from neuralode.train import train


def assert_one_line_error(returncode: int, stderr: str, prog: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr
    assert lines == [lines[0]] and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"{prog}: error: ") and message in lines[0], lines[0]


@pytest.mark.smoke
def test_help_lists_the_subcommands(tmp_path: Path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "train" in result.stdout and "eval" in result.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("solver=rk5", "unknown solver option 'rk5'; did you mean solver=rk4? choose one of: adaptive_heun, bosh3, dopri5"),
    ("task=nope", "unknown task option 'nope'; choose one of:"),
    ("solver.tol=-1", "solver.tol=-1.0 is invalid; tolerances must be positive"),
    ("solver.atol=abc", "solver.atol: Value 'abc' of type 'str' could not be converted to Float"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid; it must be at least 1"),
    ("trainer.epochs=ten", "trainer.epochs: Value 'ten' of type 'str' could not be converted to Integer"),
    ("trainer.lr=0.1", "trainer.lr is not a known key; TrainerConfig has: epochs"),
    ("+trainer.lr=0.1", "trainer.lr is not a known key; TrainerConfig has: epochs"),
    ("seed=[1", "no viable alternative at input '[1'"),
    ("regularize.kinetic=-0.1", "regularize.kinetic=-0.1 is invalid; it must be >= 0 and finite (0: off)"),
    ("regularize.kinetik=0.1", "regularize.kinetik is not a known key; did you mean regularize.kinetic?"),
    ("regularize.steer=1.0", "regularize.steer=1 is invalid for model=toy: its solves end at T=1, and "
                             "t1 ~ U[T - b, T + b] must stay after t0 = 0; use a b below 1"),
])
def test_train_errors_are_one_line(monkeypatch, capsys, tmp_path: Path, override: str, message: str):
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, override)
    assert_one_line_error(code, err, "neuralode train", message)
    assert not (tmp_path / "outputs" / "toy").exists() or not any((tmp_path / "outputs" / "toy").iterdir())


def test_unknown_command(monkeypatch, capsys, tmp_path: Path):
    code, err = run_main(monkeypatch, capsys, tmp_path, "fit")
    assert_one_line_error(code, err, "neuralode", "unknown command 'fit'; use one of: train, eval")


@pytest.mark.smoke
def test_error_in_a_real_process(tmp_path: Path):
    result = cli("train", SEARCHPATH, *TOY, "solver=rk5", cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr, "neuralode train", "unknown solver option 'rk5'")


@pytest.mark.smoke
def test_corrupt_checkpoint_on_resume_is_one_line(tmp_path: Path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    result = cli("train", SEARCHPATH, *TOY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr, "neuralode train",
                          f"checkpoint {ckpt} is damaged or not a torch file")


@pytest.mark.smoke
def test_train_then_eval(tmp_path: Path):
    """Default run dir, then ``eval`` at another solver with the run dir as it was printed (= and , in it)."""
    train = cli("train", SEARCHPATH, *TOY, "solver=rk4", "solver.options.step_size=0.25", "trainer.epochs=1",
                cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    run_dir = tmp_path / "outputs" / "toy" / "solver.options.step_size=0.25,solver=rk4"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and run_dir.as_posix() in train.stdout

    result = cli("eval", f"checkpoint={run_dir.relative_to(tmp_path)}", "solver.options.step_size=0.125",
                 "output=sweep.jsonl", "task_module=toy_task", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test_rmse" in result.stdout and "nfe 32.0" in result.stdout  # rk4: 4 evaluations x 8 steps
    row = json.loads((tmp_path / "sweep.jsonl").read_text())
    assert row["method"] == "rk4" and row["options"] == {"step_size": 0.125} and row["nfe_eval"] == 32.0



@pytest.mark.parametrize(("args", "message"), [
    (("checkpoint=nowhere",), "no checkpoint at nowhere"),
    (("checkpoint=metrics.jsonl",), "checkpoint metrics.jsonl is damaged or not a torch file"),
    ((), "checkpoint is required; add checkpoint=<value>"),
    (("checkpoint=x", "solver.tol=-1"), "solver.tol=-1.0 is invalid"),
    (("checkpoint=x", "solver=rk5"), "unknown solver option 'rk5'"),
    (("checkpoint=x", "threads=0"), "threads=0 is invalid; use a positive number"),
])
def test_eval_errors_are_one_line(monkeypatch, capsys, tmp_path: Path, args: tuple[str, ...], message: str):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    code, err = run_main(monkeypatch, capsys, tmp_path, "eval", *args)
    assert_one_line_error(code, err, "neuralode eval", message)
    assert "training then starts over" not in err and "delete" not in err


def test_a_truncated_checkpoint_under_eval_is_named_in_one_line(monkeypatch, capsys, tmp_path: Path):
    """A copy cut short (a full disk, an interrupted transfer): the file is named as damaged, with no run-dir hint."""
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    whole = ckpt.read_bytes()
    for size in (0, 64, len(whole) // 2, len(whole) - 1):
        ckpt.write_bytes(whole[:size])
        code, err = run_main(monkeypatch, capsys, tmp_path, "eval", f"checkpoint={run_dir}", "task_module=toy_task")
        assert_one_line_error(code, err, "neuralode eval", f"checkpoint {ckpt} is damaged or not a torch file")
        assert "hydra.run.dir" not in err, size


@pytest.mark.parametrize(("override", "message"), [
    ("solver.tol=inf", "solver.tol=inf is invalid; tolerances must be positive and finite"),
    ("solver.tol=1e-12", "solver.tol=1e-12 is below what float32 can resolve"),
    ("task.lr=1e30", "a learning rate too high (task.lr=1e+30 now)"),
    ("solver.options.max_num_steps=1", "raise solver.options.max_num_steps"),
])
def test_runtime_and_precision_errors_are_one_line(monkeypatch, capsys, tmp_path: Path, override: str, message: str):
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "solver.tol=1e-5", override)
    assert_one_line_error(code, err, "neuralode train", message)


def test_file_system_errors_are_one_line(monkeypatch, capsys, tmp_path: Path):
    (tmp_path / "a_file").write_text("")
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "hydra.run.dir=a_file")
    assert_one_line_error(code, err, "neuralode train", "a_file")
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    (tmp_path / "folder").mkdir()
    code, err = run_main(monkeypatch, capsys, tmp_path, "eval", f"checkpoint={run_dir}", "output=folder",
                         "task_module=toy_task")
    assert_one_line_error(code, err, "neuralode eval", "Is a directory")


def test_sixteen_overrides_make_a_valid_run_dir(monkeypatch, capsys, tmp_path: Path):
    """The overrides name the run dir; past the file system's 255-byte limit the name keeps a head and a hash."""
    padded = "0" * 12
    overrides = [f"task.lr=0.05{padded}", "task.n_train=48", "task.n_test=16",
                 "task.batch_size=16", "task.hidden=8", f"task.step_delay=0.0{padded}",
                 f"task.default_tol=0.001{padded}", "seed=1", "trainer.epochs=1",
                 f"solver.rtol=0.001{padded}", f"solver.atol=0.001{padded}", "solver.adjoint=false",
                 "solver=bosh3", "trainer.figures_every=0", f"solver.tol=0.001{padded}", "profile=smoke"]
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["neuralode"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; monkeypatch restores it for later tests
    main(["train", SEARCHPATH, *TOY, *overrides])  # returns: no error
    assert len(",".join(sorted(overrides)).encode()) > 255
    (run_dir,) = (tmp_path / "outputs" / "toy").iterdir()
    assert len(run_dir.name.encode()) <= 200 and (run_dir / "metrics.jsonl").is_file()


@pytest.mark.smoke
def test_an_eval_sweep_goes_on_past_a_bad_job(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    result = cli("eval", "-m", f"checkpoint={run_dir}", "solver.tol=1e-1,-1,1e-2", "output=sweep.jsonl",
                 "task_module=toy_task", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("neuralode eval: error: solver.tol=-1.0 is invalid")
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    assert [r["rtol"] for r in rows] == [0.1, 0.01]
    assert re.search(r"job #1 \(.*solver.tol=-1 .*\) FAILED", result.stderr)
    assert not (tmp_path / "outputs" / "eval_multirun").exists() or not [
        p for p in (tmp_path / "outputs" / "eval_multirun").iterdir() if p.is_dir()]  # no empty job folders


@pytest.mark.parametrize(("override", "message"), [
    ("model.chanels=3", "model.chanels is not a known key; did you mean model.channels?"),
    ("solver.tool=1e-3", "solver.tool is not a known key; did you mean solver.tol?"),
    ("modle=odenet", "modle is not a known key; did you mean model?"),
    ("data=fashion-mnist", "unknown data option 'fashion-mnist'; did you mean data=fashion_mnist?"),
])
def test_a_near_miss_gets_a_suggestion(monkeypatch, capsys, tmp_path: Path, override: str, message: str):
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", "task=mnist", "model=odenet", "profile=smoke", override)
    assert_one_line_error(code, err, "neuralode train", message)


@pytest.mark.parametrize(("overrides", "message"), [
    (("task=mnist", "model=resnet", "regularize.jacobian=0.01"),
     "regularize.jacobian regularises an ODE block's dynamics, and model=resnet has none"),
    (("task=poisson", "regularize.steer=0.1"),
     "regularize.steer=0.1 samples the end time of a solve, and task=poisson reads the latent state at every event "
     "time"),
])
def test_a_regulariser_the_model_cannot_take_is_one_line(monkeypatch, capsys, tmp_path: Path,
                                                         overrides: tuple[str, ...], message: str):
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", "profile=smoke", *overrides)
    assert_one_line_error(code, err, "neuralode train", message)


@pytest.mark.parametrize(("launcher", "extra"), [("joblib", "joblib"), ("submitit_slurm", "slurm")])
def test_a_missing_launcher_plugin_names_the_extra_to_install(launcher: str, extra: str):
    from hydra.errors import MissingConfigException

    from neuralode.cli import describe_error

    error = MissingConfigException("Could not load 'hydra/launcher/...'", missing_cfg_file=f"hydra/launcher/{launcher}",
                                   options=["basic"])
    assert f'pip install -e ".[{extra}]"' in describe_error(error)


def test_a_slurm_launcher_off_a_cluster_is_one_line(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", "-m", SEARCHPATH, *TOY, "hydra/launcher=slurm_gpu")
    assert_one_line_error(code, err, "neuralode train", "hydra/launcher=slurm_gpu submits SLURM jobs, but srun is not")


def test_a_run_composes_its_config_once(monkeypatch, capsys, tmp_path: Path):
    from hydra._internal.hydra import Hydra

    calls = []
    compose_config = Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: calls.append(1) or compose_config(self, *a, **k))
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode)  # main() replaces it; restored after the test
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", SEARCHPATH, *TOY, "trainer.epochs=0")
    assert code == 2 and "trainer.epochs=0 is invalid" in err  # rejected after composing, before training
    assert len(calls) == 1


def test_eval_takes_a_thread_count(monkeypatch, capsys, tmp_path: Path):
    import torch

    run_dir = tmp_path / "run"
    train(toy_config("trainer.epochs=1"), run_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["neuralode"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    GlobalHydra.instance().clear()
    main(["eval", f"checkpoint={run_dir}", "task_module=toy_task", "threads=2"])  # returns: no error
    assert torch.get_num_threads() == 2 and "test_rmse" in capsys.readouterr().out  # the conftest restores it


@pytest.mark.parametrize(("args", "message"), [
    (("task=spiral", "data.n_spirals=7"), "data.n_spirals must be an even number >= 4"),  # the data's own check
    (("task=mnist", "data=digits", "task.default_tol=0"), "task.default_tol must be > 0"),  # the task's check
])
def test_config_errors_of_tasks_and_data_are_one_line(monkeypatch, capsys, tmp_path: Path, args: tuple[str, ...],
                                                       message: str):
    code, err = run_main(monkeypatch, capsys, tmp_path, "train", "trainer.progress=false", *args)
    assert_one_line_error(code, err, "neuralode train", message)


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path: Path):
    import toy_task

    def broken(self, batch):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(toy_task.ToyTask, "training_step", broken)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["neuralode"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match="a bug deep inside"):  # not SystemExit(2): Python prints the traceback
        main(["train", SEARCHPATH, *TOY, "hydra.run.dir=run"])
    assert "error:" not in capsys.readouterr().err


def test_only_neuralode_hydra_and_os_errors_are_the_users():
    from neuralode.cli import user_error
    from neuralode.data.idx import IDXError
    from neuralode.errors import ConfigError, NeuralodeError
    from neuralode.solvers import MaxNumStepsError
    from neuralode.train import TrainingError
    from neuralode.utils.records import MetricsError

    for error in (ConfigError("x"), MaxNumStepsError("x"), TrainingError("x"), MetricsError("x"), IDXError("x"),
                  FileNotFoundError(2, "No such file or directory", "x")):
        assert user_error(error) is error
    assert isinstance(IDXError("x"), NeuralodeError)
    for bug in (ValueError("x"), TypeError("x"), KeyError("x"), RuntimeError("x")):
        assert user_error(bug) is None
    unwritable = PermissionError(13, "Permission denied", "run/train.log")
    try:
        raise ValueError("Unable to configure handler 'file'") from unwritable  # as Hydra's logging setup does
    except ValueError as wrapped:
        assert user_error(wrapped) is unwritable
