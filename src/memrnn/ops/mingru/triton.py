"""The minGRU layer on the chunked Triton scan: the GEMM in torch, gates and recurrence fused.

    [z_pre | h̃] = x Wᵀ + b,   z = σ(z_pre),   h_t = (1 − z_t) h_{t−1} + z_t h̃_t

The custom op `memrnn_triton::mingru_recurrence` reads the projection p (B, T, 2H) and writes
h (float32, or float64 for float64 inputs); its backward op writes ∂L/∂p
(∂L/∂z_pre = g (h̃ − h_{t−1}) z (1 − z), ∂L/∂h̃ = g z) and ∂L/∂h0, recomputing z from p.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from memrnn.ops._triton import BLOCK, CHUNK, MODE_MINGRU, recurrence_dtype, run_projected


@torch.library.custom_op("memrnn_triton::mingru_recurrence", mutates_args=())
def _mingru_op(p: Tensor, h0: Tensor, chunk: int, block: int) -> Tensor:
    p, h0 = p.contiguous(), h0.contiguous()
    B, T, W = p.shape
    h = torch.empty(B, T, W // 2, dtype=recurrence_dtype(p.dtype), device=p.device)
    run_projected(MODE_MINGRU, p, h0, bwd=False, h=h, chunk=chunk, block=block)
    return h


@_mingru_op.register_fake
def _(p: Tensor, h0: Tensor, chunk: int, block: int) -> Tensor:
    B, T, W = p.shape
    return p.new_empty(B, T, W // 2, dtype=recurrence_dtype(p.dtype))


@torch.library.custom_op("memrnn_triton::mingru_recurrence_backward", mutates_args=())
def _mingru_backward_op(
    p: Tensor, h: Tensor, h0: Tensor, gh: Tensor, chunk: int, block: int
) -> tuple[Tensor, Tensor]:
    p, h, h0, gh = p.contiguous(), h.contiguous(), h0.contiguous(), gh.contiguous()
    dp, dh0 = torch.empty_like(p), torch.empty_like(h0)
    run_projected(
        MODE_MINGRU, p, h0, bwd=True, h=h, gh=gh, dp=dp, dh0=dh0, chunk=chunk, block=block
    )
    return dp, dh0


@_mingru_backward_op.register_fake
def _(p, h, h0, gh, chunk, block):
    return torch.empty_like(p), torch.empty_like(h0)


def _setup_context(ctx, inputs, output) -> None:
    p, h0, chunk, block = inputs
    ctx.save_for_backward(p, output, h0)
    ctx.options = (chunk, block)


def _backward(ctx, gh: Tensor):
    p, h, h0 = ctx.saved_tensors
    dp, dh0 = _mingru_backward_op(p, h, h0, gh, *ctx.options)
    return dp, dh0, None, None


_mingru_op.register_autograd(_backward, setup_context=_setup_context)


def mingru_layer(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    h0: Tensor,
    *,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> Tensor:
    """h (B, T, H) of the minGRU over x (B, T, D) from h0 (B, H), differentiable in every
    argument: [z_pre, h̃] = x weightᵀ + bias with weight (2H, D) (rows [0, H) the gate's,
    [H, 2H) the candidate's), z = σ(z_pre), h_t = (1 − z_t) h_{t−1} + z_t h̃_t.

    The GEMM follows autocast; h is returned in x's dtype, accumulated in float32 (float64
    for float64 inputs).
    """
    for name, t in (("x", x), ("weight", weight), ("h0", h0)):
        if not isinstance(t, Tensor):
            raise TypeError(f"mingru_layer: `{name}` must be a torch.Tensor, got {type(t)}")
    if x.dim() != 3:
        raise ValueError(f"mingru_layer: `x` must be (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if weight.dim() != 2 or weight.shape[0] % 2 or weight.shape[1] != D:
        raise ValueError(
            f"mingru_layer: `weight` has shape {tuple(weight.shape)}; expected (2H, {D})"
        )
    H = weight.shape[0] // 2
    if tuple(h0.shape) != (B, H):
        raise ValueError(f"mingru_layer: `h0` has shape {tuple(h0.shape)}; expected ({B}, {H})")
    p = F.linear(x, weight, bias)  # (B, T, 2H)
    return _mingru_op(p, h0, chunk, block).to(x.dtype)


__all__ = ["mingru_layer"]
