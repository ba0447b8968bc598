"""Pure-PyTorch parallel scan (any device): odd/even recursive doubling.

Pairs of neighbouring steps are combined with the associative operator
(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2), the half-length problem is solved recursively, and
the even steps are filled in from their odd predecessors. Work is O(T) and depth O(log T);
each level is a handful of batched elementwise ops, so it runs wherever PyTorch runs. The
backward pass is the same scan run the other way (`memrnn.ops.scan.autograd`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from memrnn.ops.scan.autograd import differentiable


def _scan_zero_init(a: Tensor, b: Tensor) -> Tensor:
    # a: (Ba, T, M) broadcastable to b: (B, T, M); returns h with h_{-1} = 0.
    T = b.shape[1]
    if T == 1:
        return b.clone()
    if a.shape[1] == 1:
        a = a.expand(a.shape[0], T, a.shape[2])
    n_pairs = T // 2
    a_even, a_odd = a[:, 0 : 2 * n_pairs : 2], a[:, 1 : 2 * n_pairs : 2]
    b_even, b_odd = b[:, 0 : 2 * n_pairs : 2], b[:, 1 : 2 * n_pairs : 2]
    # Each pair (even step, odd step) collapses into one affine map.
    h_odd = _scan_zero_init(a_odd * a_even, a_odd * b_even + b_odd)  # (B, T//2, M)
    h = torch.empty_like(b)
    h[:, 1 : 2 * n_pairs : 2] = h_odd
    h[:, 0] = b[:, 0]
    if T > 2:
        # Even steps 2, 4, ... follow the odd step just before them.
        n_even_rest = (T - 1) // 2
        h[:, 2::2] = a[:, 2::2] * h_odd[:, :n_even_rest] + b[:, 2::2]
    return h


def tree_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Scan along dim 1 of (B, T, M) tensors; a may have size 1 in dims 0 and 1."""
    if reverse:
        return tree_scan(a.flip(1), b.flip(1), h0, reverse=False).flip(1)
    # Fold h0 into the first step: h_0 = a_0 h0 + b_0.
    first = a[:, :1] * h0.unsqueeze(1) + b[:, :1]
    b = torch.cat([first, b[:, 1:]], dim=1)
    return _scan_zero_init(a, b)


# The op function: the tree forward, and its reverse run as the backward pass.
scan = differentiable(tree_scan)

__all__ = ["scan", "tree_scan"]
