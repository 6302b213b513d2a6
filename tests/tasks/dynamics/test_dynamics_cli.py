"""`neuralode train task=dynamics` end to end for every data set and model (profile=smoke: seconds each)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODELS = ("node", "rnn", "rnn_dt", "resnet_euler")


def run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neuralode", "train", "task=dynamics", "profile=smoke", "trainer.progress=false",
           "device=cpu", "trainer.threads=1", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.smoke
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("data", "sampling"), [
    ("cubic", ()),  # the course's setting: one trajectory, whole
    ("lotka_volterra", ("data.irregular=true", "data.noise_std=0.05", "data.n_trajectories=3", "data.window=4",
                        "data.batch_size=5")),
])
def test_train_smoke(tmp_path: Path, data: str, sampling: tuple[str, ...], model: str) -> None:
    # The irregular windows' neural ODE also trains with both regularisers (neuralode/models/regularization.py).
    regularize = (("regularize.kinetic=0.01", "regularize.jacobian=0.01")
                  if model == "node" and data == "lotka_volterra" else ())
    done = run(tmp_path, f"data={data}", f"model={model}", *sampling, *regularize)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "interp_mse", "extrap_mse", "unseen_mse", "rel_l2_train", "rel_l2_extrap",
                "rel_l2_unseen"):
        assert math.isfinite(record[key]), key
    # Only the neural ODE solves an ODE; the RNNs have no vector field to compare.
    assert (record["nfe_forward"] > 0) == (model == "node")
    assert ("field_rel_l2" in record) == (model in ("node", "resnet_euler"))
    assert all((key in record) == bool(regularize) for key in ("reg_kinetic", "reg_jacobian"))
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == [f"dynamics_{model}_{kind}.png" for kind in ("losses", "phase", "timeseries")]


@pytest.mark.smoke
@pytest.mark.parametrize(("override", "message"), [
    ("data.window=1", "data.window=1 is invalid; use 0 (whole trajectories) or 2..data.n_points=16"),
    ("model=odenet", "task=dynamics does not support model=odenet"),
    ("data=spiral", "task=dynamics needs data=cubic"),
    ("task.lr_schedule=step", "task.lr_schedule='step' is unknown; use one of: cosine, constant"),
    ("data.irregular=maybe", "data.irregular"),
])
def test_bad_config_is_one_line(tmp_path: Path, override: str, message: str) -> None:
    done = run(tmp_path / "run", override)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
