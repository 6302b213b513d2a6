"""`neuralode train task=spiral` end to end for each Table 2 model (profile=smoke: a few seconds each)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neuralode", "train", "task=spiral", "profile=smoke", "trainer.progress=false",
           "device=cpu", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.smoke
@pytest.mark.parametrize(("model", "n_obs"), [("latent_ode", 30), ("rnn", 50), ("rnn_dt", 100)])
def test_train_smoke(tmp_path: Path, model: str, n_obs: int) -> None:
    # The latent ODE also trains with both regularisers of its dynamics (neuralode/models/regularization.py).
    regularize = ("regularize.kinetic=0.01", "regularize.jacobian=0.01") if model == "latent_ode" else ()
    done = run(tmp_path, f"model={model}", f"data.n_obs={n_obs}", *regularize)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    record = records[0]
    for key in ("train_loss", "test_rmse", "test_rmse_interp", "test_rmse_extrap", "epoch_time_s"):
        assert math.isfinite(record[key]), key
    assert (record["nfe_forward"] > 0) == (model == "latent_ode")  # only the latent ODE solves an ODE
    assert all((key in record) == bool(regularize) for key in ("reg_kinetic", "reg_jacobian"))
    assert (tmp_path / "figures" / f"spiral_{model}_n{n_obs}.png").stat().st_size > 0
    # The latent ODE also draws its latent space (paper Figs. 8c and 9); the RNNs have none.
    latent = sorted(p.name for p in (tmp_path / "figures").glob("latent_*.png"))
    expected = [f"latent_interpolation_n{n_obs}.png", f"latent_trajectories_n{n_obs}.png"]
    assert latent == (expected if model == "latent_ode" else [])


@pytest.mark.smoke
@pytest.mark.parametrize(("override", "key"), [
    ("data.n_obs=101", "data.n_obs"),
    ("model=odenet", "model="),
    ("data=mnist", "needs data=spiral"),
    ("regularize.steer=0.1", "regularize.steer=0.1 samples the end time of a solve, and task=spiral reads"),
])
def test_bad_config_is_one_line(tmp_path: Path, override: str, key: str) -> None:
    done = run(tmp_path / "run", override)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], done.stderr
