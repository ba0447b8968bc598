"""Compiling one numba kernel loop twice, threaded and single-threaded, with separate caches.

The compiled CPU kernels (`memrnn.scan.native`, `memrnn.units.*_native`) run large problems on
threads and small ones on the calling thread, where waking workers costs more than the work.
numba's on-disk cache keys compiled code by function name and signature, not by options such
as `parallel`, so compiling one function both ways made whichever build was cached first
serve both (measured: a threaded scan running on one thread). Each build here is compiled
from a copy of the function under a name of its own.

Also here, the math that the kernels share: tanh and σ that LLVM vectorises. numba's
`math.tanh` and `math.exp` call libm one element at a time (about 30 ns per tanh on the 2-core
machine, slower than the torch loops the kernels replace) unless Intel's SVML is installed.
`vec_expm1_neg` computes exp(−a) = 2^−n e^y with y = n ln 2 − a in [−ln2/2, ln2/2], e^y − 1 by a
degree-13 Taylor polynomial (truncation below 1e-17), and 2^−n from the bits of n by selects;
tanh and σ built on it are accurate to a few ulp in float64.
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


# fdlibm's split of ln 2: n * _LN2_HI is exact for |n| < 2^20.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.44269504088896338700e00
# exp(−40) = 4e-18: below this, tanh is 1.0 in float64 and σ is within 5e-18 of 0.
_EXP_CLAMP = 40.0
_FLUSH_BELOW = 1e-30

if njit is not None:

    @njit(inline="always", error_model="numpy")
    def vec_expm1_neg(a):  # pragma: no cover - compiled
        """exp(−a) − 1 for a ≥ 0, vectorisable (a is clamped at 40, see module notes)."""
        a = min(a, _EXP_CLAMP)
        n = math.floor(a * _LOG2E + 0.5)
        y = (n * _LN2_HI - a) + n * _LN2_LO
        p = 1.0 / 6227020800.0
        p = 1.0 / 479001600.0 + y * p
        p = 1.0 / 39916800.0 + y * p
        p = 1.0 / 3628800.0 + y * p
        p = 1.0 / 362880.0 + y * p
        p = 1.0 / 40320.0 + y * p
        p = 1.0 / 5040.0 + y * p
        p = 1.0 / 720.0 + y * p
        p = 1.0 / 120.0 + y * p
        p = 1.0 / 24.0 + y * p
        p = 1.0 / 6.0 + y * p
        p = 0.5 + y * p
        p = 1.0 + y * p
        p = y * p
        k = int(n)
        s = 0.5 if k & 1 else 1.0
        s = s * (0.25 if k & 2 else 1.0)
        s = s * (0.0625 if k & 4 else 1.0)
        s = s * (0.00390625 if k & 8 else 1.0)
        s = s * (1.52587890625e-05 if k & 16 else 1.0)
        s = s * (2.3283064365386963e-10 if k & 32 else 1.0)
        return s * p + (s - 1.0)

    @njit(inline="always", error_model="numpy")
    def vec_tanh(v):  # pragma: no cover - compiled
        m = vec_expm1_neg(2.0 * abs(v))
        t = -m / (2.0 + m)
        return t if v >= 0.0 else -t

    @njit(inline="always", error_model="numpy")
    def vec_sigmoid(v):  # pragma: no cover - compiled
        e = 1.0 + vec_expm1_neg(abs(v))
        q = 1.0 / (1.0 + e)
        return q if v >= 0.0 else e * q

    @njit(inline="always", error_model="numpy")
    def flush_tiny(v):  # pragma: no cover - compiled
        # Gradients fading back through time reach subnormal numbers (float32 ones after ~60
        # steps), on which the CPU runs many times slower; below 1e-30 they are set to 0.
        return v if abs(v) >= _FLUSH_BELOW else 0.0


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
    "flush_tiny",
    "job_bounds",
    "row_chunks",
    "row_job",
    "row_jobs",
    "row_split",
    "vec_expm1_neg",
    "vec_sigmoid",
    "vec_tanh",
]
