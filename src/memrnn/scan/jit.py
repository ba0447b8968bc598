"""Compiling one numba kernel loop twice, threaded and single-threaded, with separate caches.

The compiled CPU kernels (`memrnn.scan.native`, `memrnn.units.*_native`) run large problems on
threads and small ones on the calling thread, where waking workers costs more than the work.
numba's on-disk cache keys compiled code by function name and signature, not by options such
as `parallel`, so compiling one function both ways made whichever build was cached first
serve both (measured: a threaded scan running on one thread). Each build here is compiled
from a copy of the function under a name of its own.
"""

from __future__ import annotations

import types
from collections.abc import Callable

try:
    from numba import njit
except ImportError:  # pragma: no cover - callers check their AVAILABLE flag first
    njit = None


if njit is not None:

    @njit(inline="always")
    def job_bounds(job, n_chunks, chunk, width):  # pragma: no cover - compiled
        """(batch row, first channel, end channel) of job `job` of a (batch x channel-chunk)
        split: the way every kernel here shares its work between threads."""
        m0 = (job % n_chunks) * chunk
        return job // n_chunks, m0, min(m0 + chunk, width)


def compile_kernel(fn: Callable, parallel: bool, **options: object) -> Callable:
    """njit(fn) with `parallel` and `options`, cached on disk under fn's name + a suffix."""
    suffix = "_threaded" if parallel else "_serial"
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    return njit(parallel=parallel, cache=True, nogil=True, **options)(copy)


def compile_pair(fn: Callable, **options: object) -> tuple[Callable, Callable]:
    """(threaded, serial) builds of one kernel loop (see the module notes)."""
    return compile_kernel(fn, True, **options), compile_kernel(fn, False, **options)


__all__ = ["compile_kernel", "compile_pair", "job_bounds"]
