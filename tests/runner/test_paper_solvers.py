"""The paper's solver family in the runner: solver=lsoda (SciPy's LSODA) trains every task, and
solver=implicit_adams with a step size trains the ODE-Net (profile=smoke, through the CLI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TASKS = {
    "mnist": ("task=mnist", "model=odenet", "data=digits", "model.channels=8"),
    "spiral": ("task=spiral",),
    "cnf": ("task=cnf",),
    "cnf_match": ("task=cnf_match",),
    "poisson": ("task=poisson",),
    "dynamics": ("task=dynamics",),
}


def train(run_dir: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "neuralode", "train", "profile=smoke", "trainer.progress=false", "device=cpu",
           "trainer.threads=1", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]


@pytest.mark.smoke
@pytest.mark.parametrize("task", sorted(TASKS))
def test_lsoda_trains_every_task(tmp_path: Path, task: str) -> None:
    record = train(tmp_path, *TASKS[task], "solver=lsoda")
    # Its gradients come from the adjoint (SciPy's steps cannot be backpropagated), even in the tasks whose
    # default is to backpropagate through the solver (spiral, poisson).
    assert record["nfe_forward"] > 0 and record["nfe_backward"] > 0
    config = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "method: scipy_solver" in config and "solver: LSODA" in config


@pytest.mark.smoke
def test_implicit_adams_trains_the_odenet(tmp_path: Path) -> None:
    record = train(tmp_path, *TASKS["mnist"], "solver=implicit_adams", "solver.options.step_size=0.25")
    # A fixed grid of 4 steps: the same grid backward, so equal NFE both ways.
    assert record["nfe_forward"] == record["nfe_backward"] > 4
