"""`neuralode train` end to end for each Table 1 model, on tiny IDX files (profile=smoke shrunk to one batch)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neuralode.models.mnist import MODELS

# The ODE-Net runs with every regulariser (neuralode/models/regularization.py), the RK-Net without.
REGULARIZE = {"odenet": ("regularize.kinetic=0.01", "regularize.jacobian=0.01", "regularize.steer=0.5")}


@pytest.mark.smoke
@pytest.mark.parametrize("model", MODELS)
def test_train_smoke(model: str, idx_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "neuralode", "train", "task=mnist", f"model={model}", "solver=dopri5",
           "data=fashion_mnist", f"data.root={idx_root}", "data.download=false", "profile=smoke",
           "data.limit_train=16", "data.limit_test=10", "data.test_batch_size=10", "solver.tol=0.1",
           "trainer.progress=false", *REGULARIZE.get(model, ()),
           "device=cpu", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    record = records[0]
    assert 0 <= record["train_acc"] <= 1 and 0 <= record["test_acc"] <= 1 and "test_loss" in record
    if model in ("odenet", "rknet"):
        assert record["nfe_forward"] > 0
        assert (record["nfe_backward"] > 0) == (model == "odenet")  # rknet backpropagates directly
    else:
        assert record["nfe_forward"] == 0
    assert all((key in record) == (model in REGULARIZE) for key in ("reg_kinetic", "reg_jacobian"))
    if model in REGULARIZE:
        assert record["reg_kinetic"] > 0 and record["reg_jacobian"] > 0
    assert (run_dir / "figures" / "confusion_matrix.png").is_file()


@pytest.mark.smoke
def test_missing_data_is_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "neuralode", "train", "task=mnist", "model=mlp", "profile=smoke",
           f"data.root={tmp_path}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "data.root=" in lines[0], done.stderr
