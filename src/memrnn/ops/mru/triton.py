"""The MRU layer on the chunked Triton scan: GEMMs in torch, gates and recurrence fused.

    [c | β_raw] = x w_inᵀ + b_in,   u = |c| − |β_raw|,   z = H(u),   s = sgn(c)
    h_t = (1 − z_t + ε z_t) h_{t−1} + z_t s_t,   y = h w_outᵀ + b_out

The projection p = [c | β_raw] (B, T, 2N) is one GEMM (cuBLAS on a GPU, following autocast).
The custom op `memrnn_triton::mru_recurrence` reads p and writes h (float32, or float64 for
float64 inputs) and the write count; `memrnn_triton::mru_recurrence_backward` reads p, h and
∂L/∂h and writes ∂L/∂p with the surrogate derivative of H (equations in
`memrnn.ops._triton`), recomputing z, s and a rather than storing them. Both have fake
implementations, so `torch.compile` traces the layer without graph breaks.
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor
from torch.nn import functional as F

from memrnn.ops._triton import (
    BLOCK,
    CHUNK,
    MODE_MRU,
    SURROGATE_CODES,
    recurrence_dtype,
    run_projected,
)


@torch.library.custom_op("memrnn_triton::mru_recurrence", mutates_args=())
def _mru_op(
    p: Tensor, h0: Tensor, epsilon: float, kind: int, sharpness: float, chunk: int, block: int
) -> tuple[Tensor, Tensor]:
    # kind and sharpness (the surrogate) are used by the backward pass only.
    p, h0 = p.contiguous(), h0.contiguous()
    B, T, W = p.shape
    N = W // 2
    acc = recurrence_dtype(p.dtype)
    h = torch.empty(B, T, N, dtype=acc, device=p.device)
    counts = torch.empty(B, triton.cdiv(T, chunk), N, dtype=acc, device=p.device)
    params = torch.tensor([epsilon, 1.0, math.pi, 0.0], dtype=acc).to(p.device)
    run_projected(
        MODE_MRU, p, h0, bwd=False, h=h, part=counts, params=params, chunk=chunk, block=block
    )
    return h, counts.sum() / (B * T * N)


@_mru_op.register_fake
def _(
    p: Tensor, h0: Tensor, epsilon: float, kind: int, sharpness: float, chunk: int, block: int
) -> tuple[Tensor, Tensor]:
    B, T, W = p.shape
    acc = recurrence_dtype(p.dtype)
    return p.new_empty(B, T, W // 2, dtype=acc), p.new_empty((), dtype=acc)


@torch.library.custom_op("memrnn_triton::mru_recurrence_backward", mutates_args=())
def _mru_backward_op(
    p: Tensor,
    h: Tensor,
    h0: Tensor,
    gh: Tensor,
    grad_rate: Tensor,
    epsilon: float,
    kind: int,
    sharpness: float,
    chunk: int,
    block: int,
) -> tuple[Tensor, Tensor]:
    p, h, h0, gh = p.contiguous(), h.contiguous(), h0.contiguous(), gh.contiguous()
    B, T, N = h.shape
    consts = torch.tensor([epsilon, sharpness, math.pi * sharpness], dtype=h.dtype)
    # ρ: the write-rate gradient per gate, kept on the device (no synchronisation).
    rho = (grad_rate.to(h.dtype) / (B * T * N)).reshape(1)
    params = torch.cat([consts.to(h.device), rho])
    dp = torch.empty_like(p)
    dh0 = torch.empty_like(h0)
    run_projected(
        MODE_MRU, p, h0, bwd=True, h=h, gh=gh, dp=dp, dh0=dh0, params=params, kind=kind,
        chunk=chunk, block=block,
    )  # fmt: skip
    return dp, dh0


@_mru_backward_op.register_fake
def _(p, h, h0, gh, grad_rate, epsilon, kind, sharpness, chunk, block):
    return torch.empty_like(p), torch.empty_like(h0)


def _setup_context(ctx, inputs, output) -> None:
    p, h0, epsilon, kind, sharpness, chunk, block = inputs
    ctx.save_for_backward(p, output[0], h0)
    ctx.options = (epsilon, kind, sharpness, chunk, block)


def _backward(ctx, gh: Tensor, grad_rate: Tensor):
    p, h, h0 = ctx.saved_tensors
    epsilon, kind, sharpness, chunk, block = ctx.options
    if gh is None:
        gh = torch.zeros_like(h)
    if grad_rate is None:
        grad_rate = h.new_zeros(())
    dp, dh0 = _mru_backward_op(p, h, h0, gh, grad_rate, epsilon, kind, sharpness, chunk, block)
    return dp, dh0, None, None, None, None, None


_mru_op.register_autograd(_backward, setup_context=_setup_context)


def _check(name: str, t: object, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"mru_layer: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"mru_layer: `{name}` has shape {tuple(t.shape)}; expected {shape}")


def mru_layer(
    x: Tensor,
    w_in: Tensor,
    b_in: Tensor | None,
    h0: Tensor,
    w_out: Tensor,
    b_out: Tensor | None,
    epsilon: float,
    surrogate: str,
    sharpness: float,
    *,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor]:
    """The MRU layer with an input threshold; returns (y, h_T, z̄).

    [c | β_raw] = x w_inᵀ + b_in with w_in (2N, D) (rows [0, N) the candidate's, [N, 2N) the
    threshold's, β = |β_raw|), the MRU recurrence from h0 (B, N), y = h w_outᵀ + b_out with
    w_out (O, N); z̄ is the mean write rate. Differentiable in every tensor argument (z̄
    through the surrogate of H). The GEMMs follow autocast; the recurrence runs in float32
    (float64 for float64 inputs).
    """
    _check("x", x)
    if x.dim() != 3:
        raise ValueError(f"mru_layer: `x` must be (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    _check("w_in", w_in)
    if w_in.dim() != 2 or w_in.shape[0] % 2 or w_in.shape[1] != D:
        raise ValueError(f"mru_layer: `w_in` has shape {tuple(w_in.shape)}; expected (2N, {D})")
    N = w_in.shape[0] // 2
    _check("h0", h0, (B, N))
    _check("w_out", w_out)
    if w_out.dim() != 2 or w_out.shape[1] != N:
        raise ValueError(f"mru_layer: `w_out` has shape {tuple(w_out.shape)}; expected (O, {N})")
    if surrogate not in SURROGATE_CODES:
        raise ValueError(
            f"mru_layer: unknown surrogate {surrogate!r}; expected one of {tuple(SURROGATE_CODES)}"
        )
    p = F.linear(x, w_in, b_in)  # (B, T, 2N)
    h, rate = _mru_op(
        p, h0, float(epsilon), SURROGATE_CODES[surrogate], float(sharpness), chunk, block
    )
    y = F.linear(h.to(w_out.dtype), w_out, b_out)  # (B, T, O)
    return y, h[:, -1].to(h0.dtype), rate


__all__ = ["mru_layer"]
