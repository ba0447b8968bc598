"""The spiking recurrent cell (SRC) over a sequence as sequential Triton kernels.

With the integrator input u_t = W_s s_t (B, T, N) computed for the whole sequence by one GEMM,
the SRC is elementwise per (batch row, neuron) and sequential in time (per neuron):

    i_t = α_i i_{t−1} + u_t,   θ_t = tanh(i_t / ρ)
    h_t = tanh(((ρ θ_t + b) + r h_{t−1}) + r_s hs_{t−1})
    z_t = z_hyp − (z_hyp − z_dep) σ(10 (h_{t−1} − 0.5)),   hs_t = z_t hs_{t−1} + (1 − z_t) h_{t−1}
    y_t = ReLU(h_t)

One program runs a batch row's block of neurons with (i, h, hs) in registers, in float32
(float64 for float64 inputs), and stores θ, h and hs per step for the backward kernel, which
walks time in reverse (σ_t = σ(10 (h_{t−1} − 0.5))):

    gp = (gh + gy ReLU'(h_t)) (1 − h_t²),   g = gi + gp (1 − θ_t²) = ∂L/∂u_t,   gi ← α_i g
    k = (1 − z_t) − 10 (z_hyp − z_dep) σ_t (1 − σ_t) (hs_{t−1} − h_{t−1})
    gh ← r gp + k ghs,   ghs ← r_s gp + z_t ghs   (both 0 when the recurrence is detached)

starting from the final state's gradients; ∂L/∂b = Σ gp, and the carries at t = 0 are the
initial state's gradients. ReLU' is 1 everywhere with the straight-through option.
Registered as the custom op `memrnn_triton::src`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from memrnn.ops._triton import device_guard, recurrence_dtype

BLOCK = 64


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _src_forward(
    u_ptr, i0_ptr, h0_ptr, hs0_ptr, b_ptr, prm_ptr, y_ptr, th_ptr, hseq_ptr, hsseq_ptr,
    fin_ptr, B, T, N,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    bb = tl.program_id(1).to(tl.int64)
    n = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = n < N
    # prm = [α_i, ρ, r, r_s, z_hyp, z_hyp − z_dep]
    alpha = tl.load(prm_ptr).to(ACC)
    rho = tl.load(prm_ptr + 1).to(ACC)
    r = tl.load(prm_ptr + 2).to(ACC)
    r_s = tl.load(prm_ptr + 3).to(ACC)
    z_hyp = tl.load(prm_ptr + 4).to(ACC)
    dz = tl.load(prm_ptr + 5).to(ACC)
    s = bb * N + n
    i = tl.load(i0_ptr + s, mask=mask, other=0.0).to(ACC)
    h = tl.load(h0_ptr + s, mask=mask, other=0.0).to(ACC)
    hs = tl.load(hs0_ptr + s, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + n, mask=mask, other=0.0).to(ACC)
    for t in range(T):
        off = (bb * T + t) * N + n
        i = alpha * i + tl.load(u_ptr + off, mask=mask, other=0.0).to(ACC)
        th = _tanh(i / rho)
        h_new = _tanh(((rho * th + b) + r * h) + r_s * hs)
        z = z_hyp - dz * tl.sigmoid(10.0 * (h - 0.5))
        hs = z * hs + (1.0 - z) * h
        h = h_new
        tl.store(y_ptr + off, tl.maximum(h, 0.0), mask=mask)
        tl.store(th_ptr + off, th, mask=mask)
        tl.store(hseq_ptr + off, h, mask=mask)
        tl.store(hsseq_ptr + off, hs, mask=mask)
    # fin = (i_T, h_T, hs_T), each (B, N)
    tl.store(fin_ptr + s, i, mask=mask)
    tl.store(fin_ptr + (B * N + s), h, mask=mask)
    tl.store(fin_ptr + (2 * B * N + s), hs, mask=mask)


@triton.jit
def _src_backward(
    gy_ptr, gfin_ptr, th_ptr, hseq_ptr, hsseq_ptr, h0_ptr, hs0_ptr, prm_ptr, gu_ptr, gb_ptr,
    g0_ptr, B, T, N,
    STRAIGHT: tl.constexpr, DETACH: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    bb = tl.program_id(1).to(tl.int64)
    n = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = n < N
    alpha = tl.load(prm_ptr).to(ACC)
    r = tl.load(prm_ptr + 2).to(ACC)
    r_s = tl.load(prm_ptr + 3).to(ACC)
    z_hyp = tl.load(prm_ptr + 4).to(ACC)
    dz = tl.load(prm_ptr + 5).to(ACC)
    s = bb * N + n
    gi = tl.load(gfin_ptr + s, mask=mask, other=0.0).to(ACC)
    gh = tl.load(gfin_ptr + (B * N + s), mask=mask, other=0.0).to(ACC)
    ghs = tl.load(gfin_ptr + (2 * B * N + s), mask=mask, other=0.0).to(ACC)
    gb = tl.zeros((BLOCK,), ACC)
    for j in range(T):
        t = T - 1 - j
        off = (bb * T + t) * N + n
        prev = off - N
        h = tl.load(hseq_ptr + off, mask=mask, other=0.0).to(ACC)
        th = tl.load(th_ptr + off, mask=mask, other=0.0).to(ACC)
        gy = tl.load(gy_ptr + off, mask=mask, other=0.0).to(ACC)
        hp = tl.load(hseq_ptr + prev, mask=mask & (t > 0), other=0.0).to(ACC)
        hp += tl.load(h0_ptr + s, mask=mask & (t == 0), other=0.0).to(ACC)
        hsp = tl.load(hsseq_ptr + prev, mask=mask & (t > 0), other=0.0).to(ACC)
        hsp += tl.load(hs0_ptr + s, mask=mask & (t == 0), other=0.0).to(ACC)
        if STRAIGHT:
            g_out = gy
        else:
            g_out = tl.where(h > 0.0, gy, 0.0)
        gp = (gh + g_out) * (1.0 - h * h)
        g = gi + gp * (1.0 - th * th)
        sg = tl.sigmoid(10.0 * (hp - 0.5))
        z = z_hyp - dz * sg
        k = (1.0 - z) - 10.0 * dz * sg * (1.0 - sg) * (hsp - hp)
        if DETACH:
            gh = tl.zeros((BLOCK,), ACC)
            ghs = tl.zeros((BLOCK,), ACC)
        else:
            gh, ghs = r * gp + k * ghs, r_s * gp + z * ghs
        gb += gp
        tl.store(gu_ptr + off, g, mask=mask)
        gi = alpha * g
    # g0 = (∂L/∂i_0, ∂L/∂h_0, ∂L/∂hs_0), each (B, N); gb per batch row (B, N)
    tl.store(g0_ptr + s, gi, mask=mask)
    tl.store(g0_ptr + (B * N + s), gh, mask=mask)
    tl.store(g0_ptr + (2 * B * N + s), ghs, mask=mask)
    tl.store(gb_ptr + s, gb, mask=mask)


def _params(constants: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    alpha, rho, r, r_s, z_hyp, z_dep = constants
    return torch.tensor([alpha, rho, r, r_s, z_hyp, z_hyp - z_dep], dtype=dtype).to(device)


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


@torch.library.custom_op("memrnn_triton::src", mutates_args=())
def _src_op(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, constants: list[float]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    u, i0, h0, hs0, bias = (t.contiguous() for t in (u, i0, h0, hs0, bias))
    B, T, N = u.shape
    dtype = recurrence_dtype(u.dtype)
    y, th, h_seq, hs_seq = (torch.empty(B, T, N, dtype=dtype, device=u.device) for _ in range(4))
    fin = torch.empty(3, B, N, dtype=dtype, device=u.device)
    with device_guard(u):
        _src_forward[(triton.cdiv(N, BLOCK), B)](
            u, i0, h0, hs0, bias, _params(constants[:6], dtype, u.device), y, th, h_seq, hs_seq,
            fin, B, T, N, ACC=_acc(dtype), BLOCK=BLOCK,
        )  # fmt: skip
    return y, fin[0].clone(), fin[1].clone(), fin[2].clone(), th, h_seq, hs_seq


@_src_op.register_fake
def _(u, i0, h0, hs0, bias, constants):
    B, T, N = u.shape
    dtype = recurrence_dtype(u.dtype)
    seq = [u.new_empty(B, T, N, dtype=dtype) for _ in range(4)]
    fin = [u.new_empty(B, N, dtype=dtype) for _ in range(3)]
    return seq[0], fin[0], fin[1], fin[2], seq[1], seq[2], seq[3]


@torch.library.custom_op("memrnn_triton::src_backward", mutates_args=())
def _src_backward_op(
    gy: Tensor,
    g_final: Tensor,
    th: Tensor,
    h_seq: Tensor,
    hs_seq: Tensor,
    h0: Tensor,
    hs0: Tensor,
    constants: list[float],
    straight: bool,
    detach: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, T, N = h_seq.shape
    dtype = h_seq.dtype
    gu = torch.empty_like(h_seq)
    gb = torch.empty(B, N, dtype=dtype, device=h_seq.device)
    g0 = torch.empty(3, B, N, dtype=dtype, device=h_seq.device)
    with device_guard(h_seq):
        _src_backward[(triton.cdiv(N, BLOCK), B)](
            gy.contiguous(), g_final.contiguous(), th, h_seq, hs_seq, h0.contiguous(),
            hs0.contiguous(), _params(constants, dtype, h_seq.device), gu, gb, g0, B, T, N,
            STRAIGHT=straight, DETACH=detach, ACC=_acc(dtype), BLOCK=BLOCK,
        )  # fmt: skip
    return gu, gb.sum(dim=0), g0[0].clone(), g0[1].clone(), g0[2].clone()


@_src_backward_op.register_fake
def _(gy, g_final, th, h_seq, hs_seq, h0, hs0, constants, straight, detach):
    B, T, N = h_seq.shape
    fin = [h_seq.new_empty(B, N) for _ in range(3)]
    return torch.empty_like(h_seq), h_seq.new_empty(N), *fin


def _setup_context(ctx, inputs, output) -> None:
    u, i0, h0, hs0, bias, constants = inputs
    ctx.save_for_backward(*output[4:], h0, hs0)
    ctx.constants = constants
    ctx.shapes = (u.dtype, i0.dtype, h0.dtype, hs0.dtype, bias.shape, bias.dtype)


def _backward(ctx, gy, gi, gh, ghs, *_):
    th, h_seq, hs_seq, h0, hs0 = ctx.saved_tensors
    u_dtype, i_dtype, h_dtype, hs_dtype, bias_shape, bias_dtype = ctx.shapes
    zeros = h0.new_zeros(h0.shape, dtype=h_seq.dtype)
    gy = torch.zeros_like(h_seq) if gy is None else gy
    g_final = torch.stack([zeros if g is None else g.to(h_seq.dtype) for g in (gi, gh, ghs)])
    constants, straight, detach = ctx.constants[:6], ctx.constants[6] > 0, ctx.constants[7] > 0
    gu, gb, gi0, gh0, ghs0 = _src_backward_op(
        gy, g_final, th, h_seq, hs_seq, h0, hs0, constants, straight, detach
    )
    return (
        gu.to(u_dtype),
        gi0.to(i_dtype),
        gh0.to(h_dtype),
        ghs0.to(hs_dtype),
        gb.reshape(bias_shape).to(bias_dtype),
        None,
    )


_src_op.register_autograd(_backward, setup_context=_setup_context)


def src_layer(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, constants
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SRC over u (B, T, N) from (i0, h0, hs0) (B, N) with bias (N,) and `constants`
    (an `SRCConstants`: α_i, ρ, r, r_s, z_hyp, z_dep, straight_through, detach_recurrence):
    returns (y, i_T, h_T, hs_T), differentiable in u, the initial state and the bias."""
    if u.dim() != 3:
        raise ValueError(f"src_layer: `u` must be (B, T, N), got shape {tuple(u.shape)}")
    B, T, N = u.shape
    for name, t in (("i0", i0), ("h0", h0), ("hs0", hs0)):
        if tuple(t.shape) != (B, N):
            raise ValueError(f"src_layer: `{name}` has shape {tuple(t.shape)}; expected ({B}, {N})")
    if bias.numel() != N:
        raise ValueError(f"src_layer: `bias` has {bias.numel()} elements; expected {N}")
    values = [float(v) for v in constants[:6]]
    values += [float(bool(constants.straight_through)), float(bool(constants.detach_recurrence))]
    y, i, h, hs, *_ = _src_op(u, i0, h0, hs0, bias.reshape(-1), values)
    return y, i, h, hs


# The name every backend of the op exports, for `memrnn.ops.dispatch`.
src_loop = src_layer

__all__ = ["src_layer", "src_loop"]
