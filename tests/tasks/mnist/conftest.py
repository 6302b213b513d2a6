"""Fixtures for the MNIST tests: tiny IDX datasets in tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest
from mnist_testdata import write_dataset


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A folder holding the four tiny ``.gz`` IDX files directly."""
    return write_dataset(tmp_path / "idx")
