"""Shared test fixtures.

Real recordings live outside the repository (``../shared/data`` next to the checkout, or wherever
``KEYGRID_DATA`` points). Tests that need them take the ``shared_data`` fixture and are skipped,
with the reason, where the data is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real test data is expected (it may not exist)."""
    env = os.environ.get('KEYGRID_DATA')
    return Path(env) if env else REPO_ROOT.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f'real test data not found at {root} (set KEYGRID_DATA)')
    return root


def require(path: Path) -> Path:
    """Skip the calling test, naming the file, when ``path`` is missing."""
    if not path.exists():
        pytest.skip(f'test data missing: {path}')
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
