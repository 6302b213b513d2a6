"""Fixtures for the runner tests (helpers live in runner_helpers.py)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# runner_helpers and toy_task live here; put them on the path under any pytest --import-mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_helpers import toy_config  # noqa: E402

from neuralode.train import train  # noqa: E402
from neuralode.utils.metrics import MetricsFile  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; the toy task gains nothing from more
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_toy(tmp_path: Path) -> Callable[..., tuple[Path, list[dict]]]:
    """Train the toy task in-process into ``tmp_path/<name>``; returns the run dir and its metrics."""

    def run(*overrides: str, name: str = "run") -> tuple[Path, list[dict]]:
        run_dir = tmp_path / name
        train(toy_config(*overrides), run_dir)
        return run_dir, MetricsFile(run_dir / "metrics.jsonl").records()

    return run
