"""Helpers for the runner tests: compose configs and run the CLI with the test-only ``toy`` task."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from neuralode.cli import main
from neuralode.config import config_dir, register_configs

HERE = Path(__file__).resolve().parent
SEARCHPATH = f"hydra.searchpath=[file://{HERE / 'configs'}]"
TOY = ("task=toy", "trainer.progress=false")
NEURALODE = Path(sys.executable).with_name("neuralode")
# Keys whose values are wall-clock measurements, so they differ between otherwise identical runs.
TIMING_KEYS = {"epoch_time_s", "eval_time_s"}


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config ``neuralode train <overrides>`` would get (with the toy task on the search path)."""
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[SEARCHPATH, *overrides], return_hydra_config=hydra)


def toy_config(*overrides: str) -> DictConfig:
    return compose_config(*TOY, *overrides)


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def cli(*args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run the installed ``neuralode`` command with the toy task importable."""
    return subprocess.run([str(NEURALODE), *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          **kwargs)


def without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, cwd: Path, *args: str) -> tuple[int, str]:
    """``neuralode <args>`` in this process, the function the console script runs; returns the exit code (0 when
    it returns) and stderr."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["neuralode"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; monkeypatch restores it
    GlobalHydra.instance().clear()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err
