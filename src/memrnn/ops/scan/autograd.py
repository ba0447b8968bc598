"""The backward pass of the linear scan, for backends that only write a forward kernel.

With g_t the total gradient reaching h_t (scan order t = 1 … T):

    g_t = dL/dh_t|direct + conj(a_{t+1}) g_{t+1},   dL/db_t = g_t,
    dL/da_t = g_t conj(h_{t-1}),   dL/dh0 = conj(a_1) g_1,

i.e. a scan in the opposite direction with the gates shifted by one step. Only a, h and h0
are saved, so no per-step autograd graph is ever built. Conjugates follow PyTorch's
convention for complex tensors and are no-ops for real ones.

`differentiable(forward)` turns a forward kernel `forward(a, b, h0, reverse) -> h` on
(B, T, M) tensors into the op function `scan(a, b, h0, reverse=False) -> h` that a backend
module exports, its backward running the same kernel once in reverse.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ForwardFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]
BackwardFn = Callable[[Tensor, Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor, Tensor]]


def reverse_scan_backward(
    forward: ForwardFn, a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/db, dL/da of shape (B, Ta, M), dL/dh0) by one scan of `forward` the other way."""
    a_conj = a.conj()
    if a.shape[1] > 1:
        # Position t needs a_{next(t)}; the slot of the first-processed step multiplies a zero
        # initial state, so it is filled with zeros (never inf * 0).
        pad = torch.zeros_like(a_conj[:, :1])
        if reverse:
            a_next = torch.cat([pad, a_conj[:, :-1]], dim=1)
        else:
            a_next = torch.cat([a_conj[:, 1:], pad], dim=1)
    else:
        a_next = a_conj
    g = forward(a_next.contiguous(), gh, torch.zeros_like(h0), not reverse)
    if reverse:
        h_prev = torch.cat([h[:, 1:], h0.unsqueeze(1)], dim=1)
    else:
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
    da = g * h_prev.conj()
    if a.shape[1] == 1:
        da = da.sum(dim=1, keepdim=True)
    first = -1 if reverse else 0
    dh0 = a_conj[:, first] * g[:, first]
    return g, da, dh0


def differentiable(forward: ForwardFn, backward: BackwardFn | None = None) -> Callable[..., Tensor]:
    """The op function of a backend from its forward kernel (and a fused backward, if any).

    `backward(a, h, h0, gh, reverse) -> (dL/db, dL/da (B, Ta, M), dL/dh0)`; without one,
    `reverse_scan_backward` runs `forward` the other way.
    """

    def run_backward(a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool):
        if backward is not None:
            return backward(a, h, h0, gh, reverse)
        return reverse_scan_backward(forward, a, h, h0, gh, reverse)

    class _Scan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
            h = forward(a, b, h0, reverse)
            ctx.reverse = reverse
            ctx.save_for_backward(a, h, h0)
            return h

        @staticmethod
        def backward(ctx, gh: Tensor):
            a, h, h0 = ctx.saved_tensors
            g, da, dh0 = run_backward(a, h, h0, gh.contiguous(), ctx.reverse)
            if a.shape[0] == 1 and da.shape[0] > 1:
                da = da.sum(dim=0, keepdim=True)
            return da, g, dh0.expand_as(h0), None

    def scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
        return _Scan.apply(a, b, h0, reverse)

    scan.__doc__ = (
        "h_t = a_t h_{t-1} + b_t over dim 1 of (B, T, M) tensors; a: (B or 1, T or 1, M), "
        "h0: (B, M). Differentiable in a, b and h0."
    )
    return scan


__all__ = ["differentiable", "reverse_scan_backward"]
