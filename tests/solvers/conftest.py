"""Solver tests run in float64 on one thread (the machine is shared)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _solver_defaults(float64_single_thread):
    yield
