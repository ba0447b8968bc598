"""Process-wide settings for fast CPU training, applied by memrnn's command-line tools.

`keep_freed_memory()` has glibc's malloc keep freed blocks for reuse, so that a training step
does not take page faults over its activations again every step (see `memrnn.ops._cpu` for
the measurements and the price in memory). It is opt-in for library users: one call at the
start of a program. The `memrnn` command, the demo, the experiment runner and
`python -m benchmarks.units` apply it.

`set_threads(n)` sets the threads of every compute library memrnn runs on together: PyTorch's
intra-op pool and numba's pool (the compiled CPU kernels). Left alone, each library starts one
thread per core, and numba ignores OMP_NUM_THREADS. The two pools take turns (a kernel runs
between torch operations), so at most `n` threads are runnable at a time. On a CPU that other
processes also use, a pool with more threads than there are free cores waits at every barrier
for a thread the scheduler has put aside: beside two busy processes on a 2-core CPU,
`memrnn train --model cmru-small --task flip-flop --steps 40` trained 10.9 times as long with
one thread per core in each library as with one thread per library, and with the sizing
below 0.89-1.06 times as long (benchmarks/threads.py, benchmarks/README.md). Starting numba's
OpenMP pool also resets the OpenMP thread count that torch shares to numba's pool size, so
numba is set first. `set_threads()` without an argument picks
`default_threads()`: OMP_NUM_THREADS or NUMBA_NUM_THREADS when set, otherwise the cores this
process may use that are idle now. The `memrnn` command applies it at start (`--threads N`
sets it).
"""

from __future__ import annotations

import math
import os
import time

import torch

from memrnn.ops._cpu import DEFAULT_LIMIT, NUMBA_AVAILABLE, freed_memory_kept, keep_freed_memory

ENV_THREADS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity set where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """cpu index -> (busy, total) jiffies from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            values = [int(v) for v in rest.split()]
            cpu = int(name[3:])
        except ValueError:
            continue
        # user nice system idle iowait irq softirq steal: idle and iowait are idle time.
        total = sum(values[:8])
        out[cpu] = (total - values[3] - values[4], total)
    return out


def idle_cores(window: float = 0.1) -> float | None:
    """How many of this process's cores were idle over the next `window` seconds (from
    /proc/stat), or None where that cannot be measured (then the load average is used)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    before = _cpu_times()
    if not before:
        return None
    time.sleep(window)
    after = _cpu_times()
    if not after:
        return None
    idle = 0.0
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            return None
        busy = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        if total <= 0:
            return None
        idle += 1.0 - min(1.0, max(0.0, busy / total))
    return idle


def _env_threads(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def default_threads() -> int:
    """The thread count `set_threads()` uses: OMP_NUM_THREADS, else NUMBA_NUM_THREADS, when
    set; otherwise the cores this process may use that are idle now (measured over 0.1 s from
    /proc/stat; the 1-minute load average where that is not available), at least 1."""
    for name in ENV_THREADS:
        value = _env_threads(name)
        if value is not None:
            return value
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        try:
            idle = cores - os.getloadavg()[0]
        except (AttributeError, OSError):
            idle = float(cores)
    # A core counts when more than half of it is free.
    return max(1, min(cores, math.floor(idle + 0.5)))


def _numba_limit() -> int:
    """The most threads numba's pool can run (fixed when numba is imported)."""
    if not NUMBA_AVAILABLE:
        return 0
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def set_threads(n: int | None = None) -> int:
    """Run PyTorch's intra-op pool and numba's pool with `n` threads each (None:
    `default_threads()`); returns the count set. numba's share is capped by the size its pool
    was started with (NUMBA_NUM_THREADS, by default the number of cores)."""
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: `n` must be an integer >= 1, got {n!r}")
    limit = _numba_limit()
    if limit:
        import numba

        # numba first: starting its OpenMP pool sets the OpenMP thread count, which torch's
        # pool shares, back to numba's pool size (measured: torch 1 -> 2 threads).
        numba.set_num_threads(min(n, limit))
    torch.set_num_threads(n)
    return n


def get_threads() -> dict[str, int]:
    """The threads each library runs with now: {"torch": ..., "numba": ...} (numba 0 when it
    is not installed)."""
    out = {"torch": torch.get_num_threads(), "numba": 0}
    if NUMBA_AVAILABLE:
        import numba

        out["numba"] = int(numba.get_num_threads())
    return out


__all__ = [
    "DEFAULT_LIMIT",
    "default_threads",
    "freed_memory_kept",
    "get_threads",
    "idle_cores",
    "keep_freed_memory",
    "set_threads",
    "usable_cores",
]
