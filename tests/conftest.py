"""Fixtures shared across test folders."""
from __future__ import annotations

import logging
import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``) the workers share the cores: each takes its share of torch's threads,
    so that two workers on a 2-core machine do not run four threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture
def float64_single_thread():
    """Solver-accuracy tests run in float64, on one thread (CI machines have 2 cores)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command run in-process (``cli.main``) lets Hydra configure the root logger, with a file handler into that
    test's run dir; a later test's log lines must not go to it (the dir may be gone)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
