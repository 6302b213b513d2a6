"""The Python API (neuralode.api): train from overrides, load a run dir, evaluate it at another solver."""
from __future__ import annotations

from pathlib import Path

import pytest
from runner_helpers import SEARCHPATH, TOY

from neuralode import api
from neuralode.config import ConfigError
from neuralode.utils.checkpoint import CheckpointError


def test_train_load_and_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    run = api.train(SEARCHPATH, *TOY, "solver=rk4", "solver.options.step_size=0.25", "trainer.epochs=1")
    assert run.run_dir == Path("outputs/toy/solver.options.step_size=0.25,solver=rk4")  # the CLI's run dir
    assert [r["epoch"] for r in run.metrics] == [1] and run.config.solver.method == "rk4"

    with pytest.raises(CheckpointError, match="no module is imported on a file's word"):
        api.load_run(run.run_dir)  # a plug-in task's module comes from the caller, never from the checkpoint
    loaded = api.load_run(run.run_dir, task_module="toy_task")
    assert loaded.metrics == run.metrics and loaded.config == run.config
    assert all((a == b).all() for a, b in zip(loaded.model.state_dict().values(), run.model.state_dict().values()))

    same = loaded.evaluate()
    assert same["test_rmse"] == pytest.approx(run.metrics[-1]["test_rmse"], rel=1e-6) and same["nfe_eval"] == 16
    finer = loaded.evaluate(options={"step_size": 0.125})
    assert finer["nfe_eval"] == 32 and finer["solver"] == "rk4"
    adaptive = loaded.evaluate("dopri5", tol=1e-1)
    assert (adaptive["method"], adaptive["rtol"], adaptive["atol"]) == ("dopri5", 0.1, 0.1)


def test_the_api_refuses_what_the_cli_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="trainer.epochs=0 is invalid"):
        api.train(SEARCHPATH, *TOY, "trainer.epochs=0")
    run = api.train(SEARCHPATH, *TOY, "trainer.epochs=1", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="solver.method=rk4 takes fixed steps"):
        run.evaluate("rk4")
