"""Process-wide settings of a serving process, made once before it starts answering."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from genre_pipeline import settings

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter


def configure_serving_process(inference_threads: int) -> None:
    """ONNX Runtime on ``inference_threads`` threads (this process's share of the cores); numpy's and
    scikit-learn's BLAS and OpenMP pools on one thread, since they would otherwise spin on the cores
    the graphs need between calls; and at most two glibc malloc arenas: request threads decoding
    posters each got an arena of their own, which held ~400 MB more at peak under load (measured)."""
    os.environ.setdefault(settings.INFERENCE_THREADS_ENV, str(inference_threads))
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt") and not libc.mallopt(M_ARENA_MAX, 2):
            log.warning("could not limit malloc arenas (mallopt failed)")
