"""Process-wide settings for fast CPU training, applied by memrnn's command-line tools.

glibc's malloc serves blocks above its mmap threshold (128 KiB, raised on the fly up to
32 MiB) with fresh pages from the kernel and gives heap memory above its trim threshold
back when freed. A training step allocates and frees its (B, T, N) activations and gradients
every step, so each step then takes page faults over all of them again: measured on the
2-core machine, a BMRU training step (B = 16, T = 1024, D = N = 128, parallel mode, median of
40 steps) took 42.8 and 37.0 ms in two processes with the defaults and 31.3-31.9 ms in three
with `keep_freed_memory()`, the elementwise ops on (B, T, N) tensors running 2-4x slower when
they fault. The price is memory: freed blocks stay in the process for reuse instead of going
back to the system.

It is opt-in for library users (one call at the start of a program); the `memrnn` command,
the demo, the experiment runner and `python -m benchmarks.units` apply it (the benchmark to
both modes it compares; `--no-keep-freed-memory` measures without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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


__all__ = ["DEFAULT_LIMIT", "freed_memory_kept", "keep_freed_memory"]
