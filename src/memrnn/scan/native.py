"""Native CPU scan: a JIT-compiled loop, sequential in time, parallel over batch and channels.

Why numba rather than a C++ extension: the recurrence is memory-bound, so the kernel only has
to stream a, b and h once with vectorised inner loops, which numba's LLVM backend does; it
needs no C++ toolchain at install time, compiles each dtype on first use (cached on disk), and
supports complex64/complex128 natively. Work is split over threads by (batch, channel-chunk)
jobs so that every thread owns whole time series and no two threads write the same element.

The backward kernel is fused: one reverse pass computes dL/db (the reverse scan), dL/da
(accumulated in place when a is constant in time) and dL/dh0, reading only a, h and h0.

Output cache: the outputs h, dL/db and dL/da of large scans (1 MiB or more) are placed in
buffers that this module keeps and hands out again, once no tensor uses them any more, for the
next output of the same size. A fresh buffer of tens of megabytes costs more to page-fault in
than the scan costs to run (glibc gives large blocks back to the operating system on free, so
every training step would fault its outputs in again; B=16, T=4096, N=256 float32 forward +
backward: 37 ms without the cache, 15.5 ms with it). Cached buffers are aligned to and advised
for 2 MiB huge pages. The cache holds at most its cap in bytes (256 MiB by default; see
`output_cache_bytes()`), counting buffers in use and free ones, each with up to 2 MiB of
alignment slack: that much memory may stay allocated after the outputs are freed. Free buffers
are released least recently used first when room is needed, and outputs that do not fit come
from ordinary allocations. Memory a tensor still uses, through any view, `.grad` or
saved-for-backward reference, is never handed out. `set_output_cache(0)` (or the environment
variable MEMRNN_SCAN_CACHE_BYTES=0) switches the cache off and releases what it holds.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from memrnn.scan.jit import compile_pair, job_bounds

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatching
    numba = None

AVAILABLE = numba is not None
# Rows of time prefetched at once when a kernel walks time downwards (B=16, T=4096, N=256:
# backward pass 42 ms without prefetching, 14 ms with 128-row blocks, 10 ms walking upwards).
_BLOCK = 128
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
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)

if AVAILABLE:

    @njit(cache=True, nogil=True)
    def _touch(x, i, t_lo, t_hi, m0, m1):  # pragma: no cover - compiled
        """Reads rows t_lo..t_hi-1 of x[i, :, m0:m1] in ascending order, one load per line."""
        total = 0.0
        for t in range(t_lo, t_hi):
            row = x[i, t, m0:m1]
            for m in range(0, m1 - m0, 8):
                total += abs(row[m])
        return total

    def _forward_loop(a, b, h0, h, reverse, chunk):  # pragma: no cover - compiled
        B, T, M = b.shape
        step_b = 1 if a.shape[0] > 1 else 0
        step_t = 1 if a.shape[1] > 1 else 0
        n_chunks = (M + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, M)
            iba = ib * step_b
            # The running state lives in a private buffer: reading it back from h (which may
            # alias a or b as far as the compiler knows) kept the loop from vectorising
            # (measured 2x slower).
            state = h0[ib, m0:m1].copy()
            sink = 0.0
            for k in range(T):
                t = T - 1 - k if reverse else k
                if reverse and k % _BLOCK == 0:
                    # Descending in time: prefetch the block upwards (see the backward kernel).
                    lo = max(0, t - _BLOCK + 1)
                    sink += _touch(b, ib, lo, t + 1, m0, m1)
                    sink += _touch(h, ib, lo, t + 1, m0, m1)
                    if step_t == 1:
                        sink += _touch(a, iba, lo, t + 1, m0, m1)
                a_row = a[iba, t * step_t, m0:m1]
                b_row = b[ib, t, m0:m1]
                h_row = h[ib, t, m0:m1]
                for m in range(m1 - m0):
                    value = a_row[m] * state[m] + b_row[m]
                    state[m] = value
                    h_row[m] = value
            if sink < 0.0:
                # Never true (a sum of magnitudes); keeps the prefetching loads alive.
                h[ib, 0, m0] = sink

    def _backward_loop(a, h, h0, gh, g, da, dh0, reverse, chunk):  # pragma: no cover
        B, T, M = h.shape
        step_b = 1 if a.shape[0] > 1 else 0
        step_t = 1 if a.shape[1] > 1 else 0
        n_chunks = (M + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, M)
            width = m1 - m0
            iba = ib * step_b
            # carry = conj(a_next) * g_next: the part of g_t that flows back from the step
            # after t in scan order. After the first step it is exactly dL/dh0.
            carry = np.zeros(width, dtype=g.dtype)
            # dL/da summed over time, used when a is constant in time.
            total = np.zeros(width, dtype=g.dtype)
            sink = 0.0
            # k indexes scan order; position p_k = k (forward) or T-1-k (reverse).
            for k in range(T - 1, -1, -1):
                t = T - 1 - k if reverse else k
                if not reverse and (k == T - 1 or k % _BLOCK == _BLOCK - 1):
                    # Time runs downwards here, and several descending streams defeat the
                    # hardware prefetcher (measured 4x slower than ascending): read the next
                    # block of rows once in ascending order so that they come from cache.
                    lo = max(0, k - _BLOCK + 1)
                    sink += _touch(gh, ib, lo, k + 1, m0, m1)
                    sink += _touch(h, ib, max(0, lo - 1), k, m0, m1)
                    sink += _touch(g, ib, lo, k + 1, m0, m1)
                    if step_t == 1:
                        sink += _touch(a, iba, lo, k + 1, m0, m1)
                        sink += _touch(da, ib, lo, k + 1, m0, m1)
                if k == 0:
                    h_prev = h0[ib, m0:m1]
                else:
                    h_prev = h[ib, t + 1 if reverse else t - 1, m0:m1]
                a_row = a[iba, t * step_t, m0:m1]
                gh_row = gh[ib, t, m0:m1]
                g_row = g[ib, t, m0:m1]
                if step_t == 0:
                    for m in range(width):
                        grad = gh_row[m] + carry[m]
                        g_row[m] = grad
                        total[m] += grad * h_prev[m].conjugate()
                        carry[m] = a_row[m].conjugate() * grad
                else:
                    da_row = da[ib, t, m0:m1]
                    for m in range(width):
                        grad = gh_row[m] + carry[m]
                        g_row[m] = grad
                        da_row[m] = grad * h_prev[m].conjugate()
                        carry[m] = a_row[m].conjugate() * grad
            dh0[ib, m0:m1] = carry
            if sink < 0.0:
                # Never true (a sum of magnitudes); keeps the prefetching loads alive.
                dh0[ib, m0] = sink
            if step_t == 0:
                da[ib, 0, m0:m1] = total


if AVAILABLE:
    # Each kernel is compiled twice: threaded for large problems and single-threaded for small
    # ones, where waking worker threads costs more than the work (and, on an oversubscribed
    # machine, can stall a microsecond scan for milliseconds); see memrnn.scan.jit for why
    # each build has a name of its own.
    _forward_threaded, _forward_serial = compile_pair(_forward_loop)
    _backward_threaded, _backward_serial = compile_pair(_backward_loop)

# Problems with fewer elements than this run single-threaded (about 0.1 ms of streaming).
PARALLEL_MIN_ELEMENTS = 1 << 18


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


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised output: a cached buffer when one is free, else a fresh allocation."""
    out = _CACHE.empty(shape, dtype)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
        _advise_huge_pages(out.data_ptr(), out.numel() * out.element_size())
    return out


def _chunk_size(batch: int, channels: int) -> int:
    # Long contiguous rows stream best (measured: chunks of 64 channels ran 4x slower than 256),
    # so channels are split only as far as needed to give every thread at least two jobs.
    threads = numba.get_num_threads() if AVAILABLE else 1
    wanted_chunks = max(1, math.ceil(2 * threads / max(batch, 1)))
    n_chunks = max(1, min(wanted_chunks, math.ceil(channels / 64)))
    return max(1, math.ceil(channels / n_chunks))


def _check(t: Tensor) -> None:
    if not AVAILABLE:
        raise RuntimeError("the 'native' scan backend needs numba: pip install numba")
    if t.device.type != "cpu":
        raise RuntimeError(f"the 'native' scan backend runs on CPU tensors, got device {t.device}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"the 'native' scan backend does not support dtype {t.dtype}")


def native_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Forward scan of (B, T, M) tensors; a: (B or 1, T or 1, M); h0: (B, M)."""
    _check(b)
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    h = _empty(tuple(b.shape), b.dtype)
    kernel = _forward_threaded if b.numel() >= PARALLEL_MIN_ELEMENTS else _forward_serial
    kernel(
        a.numpy(), b.numpy(), h0.numpy(), h.numpy(), reverse, _chunk_size(b.shape[0], b.shape[2])
    )
    return h


def native_scan_backward(
    a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dL/db, dL/da of shape (B, Ta, M), dL/dh0) for the scan that produced h."""
    _check(h)
    a, h, h0, gh = a.contiguous(), h.contiguous(), h0.contiguous(), gh.contiguous()
    g = _empty(tuple(h.shape), h.dtype)
    da = _empty((h.shape[0], a.shape[1], h.shape[2]), h.dtype)
    dh0 = torch.empty_like(h0)
    kernel = _backward_threaded if h.numel() >= PARALLEL_MIN_ELEMENTS else _backward_serial
    kernel(
        a.numpy(),
        h.numpy(),
        h0.numpy(),
        gh.numpy(),
        g.numpy(),
        da.numpy(),
        dh0.numpy(),
        reverse,
        _chunk_size(h.shape[0], h.shape[2]),
    )
    return g, da, dh0


def warm_up() -> None:
    """Compiles the kernels for every supported dtype (they are cached on disk afterwards)."""
    global PARALLEL_MIN_ELEMENTS
    saved = PARALLEL_MIN_ELEMENTS
    try:
        for threshold in (0, saved):
            PARALLEL_MIN_ELEMENTS = threshold
            for dtype in SUPPORTED_DTYPES:
                x = torch.ones(1, 2, 1, dtype=dtype)
                h = native_scan(x, x, x[:, 0])
                native_scan_backward(x, h, x[:, 0], x)
    finally:
        PARALLEL_MIN_ELEMENTS = saved


__all__ = [
    "AVAILABLE",
    "SUPPORTED_DTYPES",
    "native_scan",
    "native_scan_backward",
    "output_cache_bytes",
    "set_output_cache",
    "warm_up",
]
