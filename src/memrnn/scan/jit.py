"""Compiling one numba kernel loop twice, threaded and single-threaded, with separate caches.

The compiled CPU kernels (`memrnn.scan.native`, `memrnn.units.*_native`) run large problems on
threads and small ones on the calling thread, where waking workers costs more than the work.
numba's on-disk cache keys compiled code by function name and signature, not by options such
as `parallel`, so compiling one function both ways made whichever build was cached first
serve both (measured: a threaded scan running on one thread). Each build here is compiled
from a copy of the function under a name of its own.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - callers check their AVAILABLE flag first
    numba = njit = None


if njit is not None:

    @njit(inline="always")
    def job_bounds(job, n_chunks, chunk, width):  # pragma: no cover - compiled
        """(batch row, first channel, end channel) of job `job` of a (batch x channel-chunk)
        split: the way every kernel here shares its work between threads."""
        m0 = (job % n_chunks) * chunk
        return job // n_chunks, m0, min(m0 + chunk, width)

    @njit(inline="always")
    def row_jobs(r0, R, T, H, width):  # pragma: no cover - compiled
        """(channel slices, jobs) of a chunk of R rows from row r0 of H channels split into
        slices of `width`: one job per batch row segment and slice (see `row_job`)."""
        n_ch = (H + width - 1) // width
        return n_ch, ((r0 + R - 1) // T - r0 // T + 1) * n_ch

    @njit(inline="always")
    def row_job(job, n_ch, width, H, r0, R, T):  # pragma: no cover - compiled
        """(batch row, first and end local row, first and end channel) of job `job` of a
        chunk of the flattened (B T) rows r0 … r0 + R − 1: one batch row's segment of the
        chunk, times one slice of `width` of the H channels (see `row_split`)."""
        b = r0 // T + job // n_ch
        m0 = (job % n_ch) * width
        return b, max(r0, b * T) - r0, min(r0 + R, (b + 1) * T) - r0, m0, min(m0 + width, H)


def row_chunks(rows: int, step: int) -> list[tuple[int, int]]:
    """[(r0, r1)]: the flattened (B T) rows in chunks of `step` rows, as the layers walk them."""
    step = max(1, step)
    return [(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)]


def row_split(rows: int, r0: int, T: int, H: int, min_elements: int) -> tuple[bool, int]:
    """(threaded?, channels per job) for a chunk of `rows` rows from row r0 of H channels:
    the threads take batch row segments, and slices of channels where segments are too few;
    chunks of fewer than `min_elements` elements run on the calling thread."""
    if rows * H < min_elements:
        return False, H
    segments = (r0 + rows - 1) // T - r0 // T + 1
    slices = max(1, min(math.ceil(numba.get_num_threads() / segments), math.ceil(H / 32)))
    return True, math.ceil(H / slices)


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


__all__ = [
    "compile_kernel",
    "compile_pair",
    "job_bounds",
    "row_chunks",
    "row_job",
    "row_jobs",
    "row_split",
]
