"""End-to-end smoke runs of the CNF tasks through the CLI (a few seconds each)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def train(run_dir: Path, *overrides: str) -> list[dict]:
    cmd = [sys.executable, "-m", "neuralode", "train", *overrides, "profile=smoke", "trainer.progress=false",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Every regulariser at once (neuralode/models/regularization.py), riding on runs the smoke tests make anyway.
REGULARIZE = ("regularize.kinetic=0.01", "regularize.jacobian=0.01", "regularize.steer=0.5")


@pytest.mark.smoke
@pytest.mark.parametrize(("model", "extra"), [("cnf", ()), ("cnf", ("model.trace=hutchinson", *REGULARIZE)),
                                              ("planar", ())])
def test_cnf_max_likelihood_smoke(tmp_path: Path, model: str, extra: tuple[str, ...]) -> None:
    record = train(tmp_path, "task=cnf", "data=two_moons", f"model={model}", *extra)[-1]
    assert math.isfinite(record["test_nll"]) and math.isfinite(record["train_loss"])
    if model == "cnf":
        assert record["nfe_forward"] > 0 and record["nfe_backward"] > 0  # adjoint is on by default
        assert (tmp_path / "figures" / "snapshots.png").stat().st_size > 0
    assert (tmp_path / "figures" / "density.png").stat().st_size > 0
    regularized = REGULARIZE[0] in extra
    assert all((key in record) == regularized for key in ("reg_kinetic", "reg_jacobian"))
    if regularized:
        assert record["reg_kinetic"] > 0 and record["reg_jacobian"] > 0


@pytest.mark.smoke
@pytest.mark.parametrize("model", ["cnf", "planar"])
def test_cnf_match_smoke(tmp_path: Path, model: str) -> None:
    size = ("model.width=8", *REGULARIZE) if model == "cnf" else ("model.flows=8",)
    record = train(tmp_path, "task=cnf_match", f"model={model}", "data=split_wave", *size)[-1]
    assert math.isfinite(record["kl"]) and record["kl"] > 0
    assert (tmp_path / "figures" / "density.png").stat().st_size > 0
    if model == "cnf":
        assert record["reg_kinetic"] > 0 and record["reg_jacobian"] > 0
