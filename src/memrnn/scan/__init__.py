"""`linear_scan`, the scan primitive shared by every linear and MRU unit: h_t = a_t h_{t-1} + b_t.

The op and its backends live in `memrnn.ops.scan`; this name is kept for user code.
"""

from memrnn.ops.scan import linear_scan

__all__ = ["linear_scan"]
