"""Parameter-free ops: one folder per recurrence, one module per backend.

    scan/    linear_scan: h_t = a_t h_{t-1} + b_t (diagonal, real or complex)
    mru/     mru_layer, mru_scan: the BMRU/CMRU/ε-family recurrence (with its projections)
    mingru/  mingru_layer: the minGRU projection and recurrence
    lru/     lru_layer: the LRU recurrence in real arithmetic, with its projections
    brc/     bistable_layer: the BRC/nBRC recurrence over a sequence
    src/     src_loop, src_step: the spiking recurrent cell over a sequence
    lti/     causal_conv: the LMU's causal convolution with an impulse response (FFT or direct)

Each folder holds `naive.py` (the plain loop over time, the ground truth every other backend is
tested against), `torch.py` (batched torch ops, where the op has them), `numba.py` (compiled
CPU kernels) and, where written, `triton.py` (GPU kernels). Every op function takes
`backend="auto"`; `memrnn.ops.dispatch` owns the names and the automatic choice. CPU tuning
(`keep_freed_memory`, the kernels' output cache) is in `memrnn.ops._cpu`; its user-facing
switches are re-exported here.
"""

from memrnn.ops._cpu import keep_freed_memory, output_cache_bytes, set_output_cache
from memrnn.ops.brc import bistable_layer
from memrnn.ops.dispatch import BACKENDS, BackendUnavailable
from memrnn.ops.lru import lru_layer
from memrnn.ops.lti import causal_conv
from memrnn.ops.mingru import mingru_layer
from memrnn.ops.mru import mru_layer, mru_scan
from memrnn.ops.scan import linear_scan
from memrnn.ops.src import SRCConstants, src_loop, src_step

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "SRCConstants",
    "bistable_layer",
    "causal_conv",
    "keep_freed_memory",
    "linear_scan",
    "lru_layer",
    "mingru_layer",
    "mru_layer",
    "mru_scan",
    "output_cache_bytes",
    "set_output_cache",
    "src_loop",
    "src_step",
]
