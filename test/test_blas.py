"""One BLAS thread around the tracker and the detector (keygrid_ros/blas.py), read back from the libraries."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from keygrid_ros import blas
from keygrid_ros.perception import tracking
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig


def blas_threads() -> list[int]:
    """Thread count of every loaded BLAS library (numpy's and scipy's OpenBLAS here), as the libraries say."""
    return [info['num_threads'] for info in threadpool_info() if info['user_api'] == 'blas']


def test_blas_runs_on_one_thread_inside_and_as_before_after():
    before = blas_threads()
    assert before, 'no BLAS library found: numpy and scipy should have loaded one each'
    with blas.one_blas_thread():
        assert blas_threads() == [1] * len(before)
        with blas.one_blas_thread():  # nested (the detector calls the tracker)
            assert blas_threads() == [1] * len(before)
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before


def test_the_tracker_registers_with_one_blas_thread(monkeypatch):
    seen = []
    real = tracking.coherent_point_drift

    def recording(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, 'coherent_point_drift', recording)
    before = blas_threads()
    rng = np.random.default_rng(0)
    sheet = np.column_stack([rng.uniform(0, 0.5, (800, 2)), np.zeros(800)])
    tracker = KeypointTracker(TrackerConfig(start_frames=1))
    keypoints = sheet[:4]
    for step in range(3):
        tracker(sheet + [0.002 * step, 0, 0], keypoints)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before


def test_without_threadpoolctl_it_runs_and_says_why_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, 'threadpoolctl', None)  # import fails as if not installed
    monkeypatch.setattr(blas, '_controller', None)
    monkeypatch.setattr(blas, '_unavailable', None)
    before = blas_threads()
    with caplog.at_level(logging.WARNING, logger='keygrid_ros.blas'):
        for _ in range(3):
            with blas.one_blas_thread():
                assert blas_threads() == before  # nothing limited, nothing broken
    warnings = [r for r in caplog.records if 'threadpoolctl' in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize('value', [3, 'x'])
def test_the_decorator_returns_what_the_function_returns(value):
    @blas.single_threaded_blas
    def identity(x):
        """Docstring kept."""
        return x

    assert identity(value) == value
    assert identity.__doc__ == 'Docstring kept.'
