"""Fixtures shared across test folders."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64_single_thread():
    """Solver-accuracy tests run in float64, on one thread (CI machines have 2 cores)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
