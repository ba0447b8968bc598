"""Process-wide settings for fast CPU training, applied by memrnn's command-line tools.

`keep_freed_memory()` has glibc's malloc keep freed blocks for reuse, so that a training step
does not take page faults over its activations again every step (see `memrnn.ops._cpu` for
the measurements and the price in memory). It is opt-in for library users: one call at the
start of a program. The `memrnn` command, the demo, the experiment runner and
`python -m benchmarks.units` apply it.
"""

from memrnn.ops._cpu import DEFAULT_LIMIT, freed_memory_kept, keep_freed_memory

__all__ = ["DEFAULT_LIMIT", "freed_memory_kept", "keep_freed_memory"]
