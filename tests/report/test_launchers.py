"""Sweeps and scale-out: launcher configs compose, and a joblib sweep survives a failing job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from report_testdata import write_tiny_idx

from neuralode.config import config_dir, register_configs
from neuralode.utils.sweep import read_jobs

SWEEP_CALLBACK = "++hydra.callbacks.sweep_status._target_=neuralode.utils.sweep.SweepStatus"


def compose_with_hydra(overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_joblib_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason="hydra-joblib-launcher not installed (pip install 'neuralode[joblib]')")
    cfg = compose_with_hydra(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2


def test_submitit_slurm_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher not installed (pip install 'neuralode[slurm]')")
    cfg = compose_with_hydra(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                              "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=240"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    # Each job's submitit files land under the sweep dir, beside the runs.
    assert str(launcher.submitit_folder).startswith(str(cfg.hydra.sweep.dir))


@pytest.mark.smoke
def test_joblib_sweep_reports_failed_job_and_finishes_the_others(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason="hydra-joblib-launcher not installed (pip install 'neuralode[joblib]')")
    root = write_tiny_idx(tmp_path / "idx")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "neuralode", "train", "-m", "task=mnist", "model=mlp", "data=mnist",
           f"data.root={root}", "data.download=false", "profile=smoke", "trainer.progress=false",
           "trainer.threads=1", "solver.tol=1e-3,-1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={sweep}", SWEEP_CALLBACK]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # the sweep as a whole reports failure...
    assert "Traceback" not in proc.stderr, out
    assert "solver.tol" in proc.stderr, out  # ...naming what was wrong
    jobs = {tuple(j["overrides"]): j for j in read_jobs(sweep)}
    failed = [j for j in jobs.values() if j["status"] == "failed"]
    done = [j for j in jobs.values() if j["status"] == "completed"]
    assert len(failed) == 1 and "solver.tol=-1" in failed[0]["overrides"], jobs
    assert "FAILED" in proc.stderr and "tolerances must be positive" in failed[0]["error"]
    # ...while the good job still trained, in a folder named by its override.
    assert len(done) == 1, jobs
    run_dir = Path(done[0]["run_dir"])
    assert "solver.tol=0.001" in run_dir.name or "solver.tol=1e-3" in run_dir.name, run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]


def test_slurm_gpu_preset_extends_submitit_slurm() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher not installed (pip install 'neuralode[slurm]')")
    cfg = compose_with_hydra(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.partition, launcher.max_num_timeout) == (1, "a100", 3)
