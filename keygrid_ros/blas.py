"""Run numpy/scipy linear algebra on one thread where every matrix is small.

Why: the tracker's Coherent Point Drift solves a 128 x 128 system and multiplies (500, 128) factors some thirty
times a frame. OpenBLAS splits such products over all cores and its worker threads then spin, waiting for more
work, on the cores torch and the next stage need. On the project's 2-core machines that made a tracked frame
7x slower (``keygrid bench tracking``: 528 ms median against 70 ms on one thread, docs/results.md "Latency"),
and the front end after it 3x slower. One thread is never slower on matrices this small.

Torch is not touched: it brings its own OpenMP pool and math library, which ``threadpoolctl`` sees as ``openmp``,
not ``blas``. Without ``threadpoolctl`` (a ROS install that took only the rosdep keys) everything still works,
at OpenBLAS's own thread count, and the first use logs why.
"""

from __future__ import annotations

from contextlib import nullcontext
import functools
import logging

LOG = logging.getLogger(__name__)

_controller = None  # threadpoolctl.ThreadpoolController, made on first use (it scans the loaded libraries)
_unavailable: str | None = None


def one_blas_thread():
    """A context manager: numpy's and scipy's BLAS use one thread inside it (restored on exit)."""
    global _controller, _unavailable
    if _controller is None and _unavailable is None:
        try:
            # numpy and scipy.linalg each load their own OpenBLAS; both must be loaded before the scan.
            import numpy  # noqa: F401
            import scipy.linalg  # noqa: F401
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except ImportError as exc:
            _unavailable = str(exc)
            LOG.warning('threadpoolctl is not installed (%s): numpy/scipy linear algebra keeps its own thread '
                        'count, which makes tracking several times slower on few cores; '
                        'pip install threadpoolctl', exc)
    if _controller is None:
        return nullcontext()
    return _controller.limit(limits=1, user_api='blas')


def single_threaded_blas(function):
    """Decorator: ``function`` runs inside :func:`one_blas_thread`."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return function(*args, **kwargs)
    return wrapper
