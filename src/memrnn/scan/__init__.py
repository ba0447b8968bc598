"""The scan primitive shared by every linear and MRU unit: h_t = a_t * h_{t-1} + b_t.

`linear_scan` dispatches to one of the backends: `reference` (plain loop, ground truth),
`tree` (pure-torch parallel scan), `native` (compiled CPU kernel), `triton` (GPU kernel).
"""

from memrnn.scan.linear import (
    BACKENDS,
    linear_scan,
    reset_backend_choice,
    resolve_backend,
)

__all__ = ["BACKENDS", "linear_scan", "reset_backend_choice", "resolve_backend"]
