"""Ground-truth linear scan: a plain Python loop over time.

    h_t = a_t * h_{t-1} + b_t,   h_0 given

This file is never optimised. Its gradients come from PyTorch's autograd tracing the loop,
so it is an independent check of every other backend's hand-written backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Scan along dim 1. a broadcasts to b; h0 has b's shape without dim 1.

    Returns h with b's shape. Differentiable through ordinary autograd.
    """
    # unbind (not a[:, t]) so that autograd's backward of the slicing is one stack, not T
    # full-size scatters.
    a_steps = a.expand_as(b).unbind(1)
    b_steps = b.unbind(1)
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    h = h0
    out: list[Tensor] = [h0] * b.shape[1]
    for t in steps:
        h = a_steps[t] * h + b_steps[t]
        out[t] = h
    return torch.stack(out, dim=1)


__all__ = ["scan"]
