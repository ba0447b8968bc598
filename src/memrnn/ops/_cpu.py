"""CPU tuning shared by the compiled kernels of every op: memory, threads, vectorisable math.

Nothing here changes a result; each piece makes the numba kernels (`memrnn.ops.<op>.numba`) or
the process around them faster on CPU, and each is opt-in or invisible:

- `keep_freed_memory` (opt-in, re-exported as `memrnn.runtime.keep_freed_memory`): glibc's
  malloc serves blocks above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with
  fresh pages from the kernel and gives heap memory above its trim threshold back when freed.
  A training step allocates and frees its (B, T, N) activations and gradients every step, so
  each step then takes page faults over all of them again: a BMRU training step (B = 16,
  T = 1024, D = N = 128, parallel mode, median of 40 steps) took 42.8 and 37.0 ms in two
  processes with the defaults and 31.3-31.9 ms in three with `keep_freed_memory()`, the
  elementwise ops on (B, T, N) tensors running 2-4x slower when they fault. The price is
  memory: freed blocks stay in the process for reuse instead of going back to the system. The
  `memrnn` command, the demo, the experiment runner and `python -m benchmarks.units` apply it.
- The output cache (`empty`, `set_output_cache`, `output_cache_bytes`): the outputs of the
  kernels of 1 MiB or more are placed in buffers kept here and handed out again, once no
  tensor uses them any more, for the next output of the same size. A fresh buffer of tens of
  megabytes costs more to page-fault in than a scan costs to run (B=16, T=4096, N=256 float32
  scan forward + backward: 37 ms without the cache, 15.5 ms with it). Cached buffers are
  aligned to and advised for 2 MiB huge pages. The cache holds at most its cap in bytes
  (256 MiB by default), counting buffers in use and free ones, each with up to 2 MiB of
  alignment slack: that much memory may stay allocated after the outputs are freed. Free
  buffers are released least recently used first when room is needed, and outputs that do not
  fit come from ordinary allocations. Memory a tensor still uses, through any view, `.grad` or
  saved-for-backward reference, is never handed out. `set_output_cache(0)` (or the environment
  variable MEMRNN_SCAN_CACHE_BYTES=0) switches the cache off and releases what it holds.
- Thread splits (`job_bounds`, `row_jobs`, `row_job`, `row_split`, `chunk_size`) and compiling
  one kernel loop twice, threaded and single-threaded, with separate caches (`compile_pair`):
  large problems run on threads and small ones on the calling thread, where waking workers
  costs more than the work. numba's on-disk cache keys compiled code by function name and
  signature, not by options such as `parallel`, so compiling one function both ways made
  whichever build was cached first serve both (measured: a threaded scan running on one
  thread). Each build here is compiled from a copy of the function under a name of its own.
- The on-disk cache (`cached_njit`, used by `compile_kernel` and every cached kernel): numba
  keeps compiled kernels in the `__pycache__` beside their source, or in the user's cache
  directory (~/.cache/numba, or NUMBA_CACHE_DIR) where the package directory is read-only,
  so a process loads them in about a second instead of compiling them (10 s of CPU time for
  the kernels of one model). numba notices edits to a kernel's own file only, not to the
  helpers below that kernels inline from this one, so `compile_kernel` names each build after
  a digest of this file as well: an edit here compiles them anew instead of loading stale
  code. Where no cache directory is writable, kernels compile in every process (a warning
  says so) rather than failing to import.
- A hand-written exp, and tanh and σ on it, that LLVM vectorises (`vec_expm1_neg`,
  `vec_tanh`, `vec_sigmoid`). numba's `math.tanh` and `math.exp` call libm one element at a
  time (about 30 ns per tanh, slower than the torch loops the kernels replace) unless Intel's
  SVML is installed. `vec_expm1_neg` computes exp(−a) = 2^−n e^y with y = n ln 2 − a in
  [−ln2/2, ln2/2], e^y − 1 by a degree-13 Taylor polynomial (truncation below 1e-17), and 2^−n
  from the bits of n by selects; tanh and σ built on it are accurate to a few ulp in float64.

Timings quoted here were measured on a 2-core x86-64 CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import math
import os
import sys
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - callers check their AVAILABLE flag first
    numba = njit = prange = None

NUMBA_AVAILABLE = numba is not None


# -- freed memory (glibc) --------------------------------------------------------------------------
# mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; the heap keeps up to this much
# freed memory at its top. 1 GiB covers (B, T, N) float32 tensors up to 2^28 elements.
DEFAULT_LIMIT = 1 << 30
# The largest mmap threshold every glibc accepts (older ones refuse more).
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20

_applied: int | None = None


def keep_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Have glibc's malloc keep freed blocks of up to `limit` bytes for reuse.

    Sets M_MMAP_THRESHOLD (falling back to 32 MiB where `limit` is refused) and
    M_TRIM_THRESHOLD to `limit`. Returns True when set, False where the C library is not glibc
    (macOS, Windows, musl: nothing is changed there).
    """
    global _applied
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 << 20:
        raise ValueError(f"keep_freed_memory: `limit` must be an int >= 1 MiB, got {limit!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = min(limit, 2**31 - 1)
    if not mallopt(_M_MMAP_THRESHOLD, threshold):
        threshold = min(threshold, _GLIBC_MAX_MMAP_THRESHOLD)
        if not mallopt(_M_MMAP_THRESHOLD, threshold):
            return False
    mallopt(_M_TRIM_THRESHOLD, min(limit, 2**31 - 1))
    _applied = threshold
    return True


def freed_memory_kept() -> int | None:
    """The mmap threshold `keep_freed_memory` set in this process, or None."""
    return _applied


# -- the output cache ------------------------------------------------------------------------------
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def _advise_huge_pages(address: int, nbytes: int) -> None:
    """Asks for transparent huge pages on the whole 2 MiB pages inside [address, +nbytes).

    A fresh multi-megabyte buffer is page-faulted in 4 KiB pages on first write; for the
    scan's outputs that cost more than the scan itself (measured: 21 ms vs 4.5 ms to fault in
    64 MiB). Advice only: where madvise is unavailable nothing changes.
    """
    if _madvise is None or nbytes < _HUGE_PAGE * 2:
        return
    start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    end = (address + nbytes) & ~(_HUGE_PAGE - 1)
    if end > start:
        _madvise(start, end - start, _MADV_HUGEPAGE)


_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}
# Outputs smaller than this come from the ordinary allocator, which is fast for them.
CACHE_MIN_BYTES = 1 << 20


class _Buffer:
    """One cached block of memory, and a weak reference to the array last made on it."""

    __slots__ = ("memory", "user", "nbytes")

    def __init__(self, nbytes: int) -> None:
        # Over-allocated to start on a huge-page boundary.
        raw = np.empty(nbytes + _HUGE_PAGE, dtype=np.uint8)
        offset = -raw.ctypes.data % _HUGE_PAGE
        self.memory = raw[offset : offset + nbytes]
        self.nbytes = raw.nbytes
        self.user: weakref.ref | None = None
        _advise_huge_pages(self.memory.ctypes.data, nbytes)

    def is_free(self) -> bool:
        # The array given to torch.from_numpy lives exactly as long as the tensor storage made
        # from it, which every view of those tensors shares.
        return self.user is None or self.user() is None

    def hand_out(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        array = self.memory[: math.prod(shape) * dtype.itemsize]
        array = array.view(_NUMPY_DTYPES[dtype]).reshape(shape)
        self.user = weakref.ref(array)
        return torch.from_numpy(array)


class _OutputCache:
    """Buffers for large scan outputs, reused once every tensor on them has been freed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # Least recently handed out first.
        self._buffers: OrderedDict[int, _Buffer] = OrderedDict()
        self._held = 0

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._release(0, in_use_too=True)

    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def _release(self, needed: int, in_use_too: bool = False) -> bool:
        """Drops buffers, least recently used first, until `needed` more bytes fit.

        Free buffers go first; with `in_use_too`, buffers in use are then forgotten as well
        (their memory is freed with the last tensor on it). Returns whether `needed` fits.
        """
        passes = (True, False) if in_use_too else (True,)
        for free_only in passes:
            for key in list(self._buffers):
                if self._held + needed <= self.max_bytes:
                    return True
                buffer = self._buffers[key]
                if buffer.is_free() or not free_only:
                    del self._buffers[key]
                    self._held -= buffer.nbytes
        return self._held + needed <= self.max_bytes

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < CACHE_MIN_BYTES or nbytes + _HUGE_PAGE > self.max_bytes:
            return None
        with self._lock:
            for key, buffer in self._buffers.items():
                if buffer.memory.nbytes == nbytes and buffer.is_free():
                    self._buffers.move_to_end(key)
                    return buffer.hand_out(shape, dtype)
            if not self._release(nbytes + _HUGE_PAGE):
                return None
            buffer = _Buffer(nbytes)
            self._buffers[id(buffer)] = buffer
            self._held += buffer.nbytes
            return buffer.hand_out(shape, dtype)


def _default_cache_bytes() -> int:
    value = os.environ.get("MEMRNN_SCAN_CACHE_BYTES")
    if value is None:
        return 256 << 20
    try:
        return max(0, int(value))
    except ValueError:
        raise ValueError(
            f"MEMRNN_SCAN_CACHE_BYTES must be a whole number of bytes, got {value!r}"
        ) from None


_CACHE = _OutputCache(_default_cache_bytes())


def set_output_cache(max_bytes: int) -> None:
    """Caps the memory kept for reusing scan outputs (0 switches the cache off).

    Free buffers beyond the new cap are released at once; buffers still in use stay with
    their tensors.
    """
    if not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"set_output_cache: max_bytes must be an int >= 0, got {max_bytes!r}")
    _CACHE.resize(max_bytes)


def output_cache_bytes() -> tuple[int, int]:
    """(bytes the output cache holds now, in use or free; its cap in bytes)."""
    return _CACHE.held_bytes(), _CACHE.max_bytes


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised output: a cached buffer when one is free, else a fresh allocation."""
    out = _CACHE.empty(shape, dtype)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
        _advise_huge_pages(out.data_ptr(), out.numel() * out.element_size())
    return out


# -- the kernels' common argument check --------------------------------------------------------
def check_kernel_input(
    t: Tensor, kernel: str, dtypes: tuple[torch.dtype, ...], available: bool
) -> None:
    """RuntimeError naming `kernel` unless numba is `available` and t is a CPU tensor of one of
    `dtypes` (what every compiled kernel needs of its arguments)."""
    if not available:
        raise RuntimeError(f"{kernel} needs numba: pip install numba")
    if t.device.type != "cpu":
        raise RuntimeError(f"{kernel} runs on CPU tensors, got device {t.device}")
    if t.dtype not in dtypes:
        raise RuntimeError(f"{kernel} does not support dtype {t.dtype}")


# -- threads and compiled builds -------------------------------------------------------------------
def chunk_size(batch: int, channels: int) -> int:
    # Long contiguous rows stream best (measured: chunks of 64 channels ran 4x slower than 256),
    # so channels are split only as far as needed to give every thread at least two jobs.
    threads = numba.get_num_threads() if NUMBA_AVAILABLE else 1
    wanted_chunks = max(1, math.ceil(2 * threads / max(batch, 1)))
    n_chunks = max(1, min(wanted_chunks, math.ceil(channels / 64)))
    return max(1, math.ceil(channels / n_chunks))


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


def _source_digest(path: str = __file__) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:8]
    except OSError:  # pragma: no cover - a package without its sources
        return "nosource"


# Part of every compiled build's name (see the module notes on the on-disk cache).
HELPERS_DIGEST = _source_digest()
_warned_uncached = False


def cached_njit(fn: Callable | None = None, **options: object) -> Callable:
    """njit(fn, cache=True, **options), as a call or a decorator; where numba finds no
    writable cache directory, njit(fn, **options) and a warning (once per process)."""
    if fn is None:
        return lambda f: cached_njit(f, **options)
    try:
        return njit(cache=True, **options)(fn)
    except RuntimeError as err:
        if "no locator available" not in str(err):
            raise
    global _warned_uncached
    if not _warned_uncached:
        _warned_uncached = True
        warnings.warn(
            "memrnn: no writable directory for numba's kernel cache (the package directory "
            "and the user cache directory are read-only); kernels compile in every process. "
            "Set NUMBA_CACHE_DIR to a writable directory to cache them.",
            RuntimeWarning,
            stacklevel=2,
        )
    return njit(**options)(fn)


def compile_kernel(fn: Callable, parallel: bool, **options: object) -> Callable:
    """njit(fn) with `parallel` and `options`, cached on disk under fn's name + a suffix that
    names the build and the version of the helpers in this file it inlines."""
    suffix = ("_threaded_" if parallel else "_serial_") + HELPERS_DIGEST
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    return cached_njit(copy, parallel=parallel, nogil=True, **options)


def compile_pair(fn: Callable, **options: object) -> tuple[Callable, Callable]:
    """(threaded, serial) builds of one kernel loop (see the module notes)."""
    return compile_kernel(fn, True, **options), compile_kernel(fn, False, **options)


__all__ = [
    "DEFAULT_LIMIT",
    "HELPERS_DIGEST",
    "NUMBA_AVAILABLE",
    "cached_njit",
    "check_kernel_input",
    "chunk_size",
    "compile_kernel",
    "compile_pair",
    "empty",
    "flush_tiny",
    "freed_memory_kept",
    "job_bounds",
    "keep_freed_memory",
    "njit",
    "output_cache_bytes",
    "prange",
    "row_chunks",
    "row_job",
    "row_jobs",
    "row_split",
    "set_output_cache",
    "vec_expm1_neg",
    "vec_sigmoid",
    "vec_tanh",
]
