"""The LRU layer on the chunked Triton scan, complex numbers as [real | imaginary] planes.

    p = u W_inᵀ = [Re(B u) | Im(B u)],   h_t = λ h_{t−1} + γ p_t,   y = h W_outᵀ + D ⊙ u

(the split layout of `memrnn.ops.lru`). The GEMMs are torch ops; the custom op
`memrnn_triton::lru_recurrence` applies γ and the complex products with λ inside the kernel
and writes h (B, T, 2N). Its backward op writes ∂L/∂p = γ g, ∂L/∂h0 = conj(λ) g_1, and the
sums ∂L/∂λ = Σ g conj(h_{t−1}) and ∂L/∂γ = Σ Re(conj(p) g), reduced per chunk in the kernel
and over chunks and batch rows in torch.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
from torch.nn import functional as F

from memrnn.ops._triton import BLOCK, CHUNK, MODE_LRU, recurrence_dtype, run_projected


@torch.library.custom_op("memrnn_triton::lru_recurrence", mutates_args=())
def _lru_op(p: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, chunk: int, block: int) -> Tensor:
    p, lam, gamma, h0 = p.contiguous(), lam.contiguous(), gamma.contiguous(), h0.contiguous()
    h = torch.empty(p.shape, dtype=recurrence_dtype(p.dtype), device=p.device)
    run_projected(MODE_LRU, p, h0, bwd=False, h=h, lam=lam, gamma=gamma, chunk=chunk, block=block)
    return h


@_lru_op.register_fake
def _(p: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, chunk: int, block: int) -> Tensor:
    return p.new_empty(p.shape, dtype=recurrence_dtype(p.dtype))


@torch.library.custom_op("memrnn_triton::lru_recurrence_backward", mutates_args=())
def _lru_backward_op(
    p: Tensor, lam: Tensor, gamma: Tensor, h: Tensor, h0: Tensor, gh: Tensor, chunk: int, block: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p, lam, gamma = p.contiguous(), lam.contiguous(), gamma.contiguous()
    h, h0, gh = h.contiguous(), h0.contiguous(), gh.contiguous()
    B, T, W = p.shape
    N = W // 2
    dp, dh0 = torch.empty_like(p), torch.empty_like(h0)
    part = torch.empty(B, triton.cdiv(T, chunk), 3, N, dtype=h.dtype, device=p.device)
    run_projected(
        MODE_LRU, p, h0, bwd=True, h=h, lam=lam, gamma=gamma, gh=gh, dp=dp, dh0=dh0, part=part,
        chunk=chunk, block=block,
    )  # fmt: skip
    sums = part.sum(dim=(0, 1))  # (3, N)
    return dp, sums[:2].to(lam.dtype, copy=True), sums[2].to(gamma.dtype, copy=True), dh0


@_lru_backward_op.register_fake
def _(p, lam, gamma, h, h0, gh, chunk, block):
    return torch.empty_like(p), torch.empty_like(lam), torch.empty_like(gamma), torch.empty_like(h0)


def _setup_context(ctx, inputs, output) -> None:
    p, lam, gamma, h0, chunk, block = inputs
    ctx.save_for_backward(p, lam, gamma, output, h0)
    ctx.options = (chunk, block)


def _backward(ctx, gh: Tensor):
    p, lam, gamma, h, h0 = ctx.saved_tensors
    dp, dlam, dgamma, dh0 = _lru_backward_op(p, lam, gamma, h, h0, gh, *ctx.options)
    return dp, dlam, dgamma, dh0, None, None


_lru_op.register_autograd(_backward, setup_context=_setup_context)


def lru_layer(
    u: Tensor,
    w_in: Tensor,
    lam: Tensor,
    gamma: Tensor,
    h0: Tensor,
    w_out: Tensor,
    d: Tensor,
    *,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:
    """y = Re(C h) + D ⊙ u over h_t = λ h_{t−1} + γ (B u_t) for u (B, T, H) from h0 (B, 2N):
    returns y (B, T, H) and h_T (B, 2N), differentiable in every argument.

    Split layout: w_in = [B_re; B_im] (2N, H), lam = (Re λ, Im λ) (2, N),
    w_out = [C_re, −C_im] (H, 2N); γ (N,) and d (H,) are real. The GEMMs follow autocast;
    the recurrence accumulates in float32 (float64 for float64 inputs).
    """
    for name, t in (("u", u), ("w_in", w_in), ("lam", lam), ("gamma", gamma), ("h0", h0)):
        if not isinstance(t, Tensor):
            raise TypeError(f"lru_layer: `{name}` must be a torch.Tensor, got {type(t)}")
    if u.dim() != 3:
        raise ValueError(f"lru_layer: `u` must be (B, T, H), got shape {tuple(u.shape)}")
    B, T, H = u.shape
    if w_in.dim() != 2 or w_in.shape[0] % 2 or w_in.shape[1] != H:
        raise ValueError(f"lru_layer: `w_in` has shape {tuple(w_in.shape)}; expected (2N, {H})")
    N = w_in.shape[0] // 2
    for name, t, shape in (("lam", lam, (2, N)), ("gamma", gamma, (N,)), ("h0", h0, (B, 2 * N))):
        if tuple(t.shape) != shape:
            raise ValueError(f"lru_layer: `{name}` has shape {tuple(t.shape)}; expected {shape}")
    p = F.linear(u, w_in)  # (B, T, 2N)
    h = _lru_op(p, lam, gamma, h0, chunk, block)  # (B, T, 2N)
    y = F.linear(h.to(w_out.dtype), w_out) + d * u  # (B, T, H)
    return y, h[:, -1].to(h0.dtype)


__all__ = ["lru_layer"]
