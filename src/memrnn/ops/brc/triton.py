"""BRC and nBRC over a sequence as sequential Triton kernels, the state in registers.

Per step, with drive = [U_a x + b_a | U_c x + b_c | U x + b] (B, T, 3H) precomputed,

    a_t = 1 + tanh(pa_t),  pa_t = drive_a + f_a(h_{t−1})
    c_t = σ(pc_t),         pc_t = drive_c + f_c(h_{t−1})
    u_t = tanh(drive_h + a_t h_{t−1}),   h_t = c_t h_{t−1} + (1 − c_t) u_t

with f = (w_a ⊙ h, w_c ⊙ h) for the BRC (weight (2, H)) and (W_a h, W_c h) for the nBRC
(weight (2H, H), `dense`). The recurrence is nonlinear in h, so time is a loop; one program
runs one batch row with all H neurons in registers (the nBRC's matrix-vector products need the
whole state), in float32 (float64 for float64 inputs). The backward kernel walks time in
reverse, recomputing the gates from h_{t−1} rather than storing them:

    ∂pa = g (1 − c)(1 − u²) h_{t−1} (1 − tanh²(pa)),  ∂pc = g (h_{t−1} − u) c (1 − c),
    ∂drive_h = g (1 − c)(1 − u²),  carry = g c + ∂drive_h a + f'ᵀ (∂pa, ∂pc)

writing ∂L/∂drive, ∂L/∂h0 and, for the BRC, per batch row Σ_t (∂pa, ∂pc) h_{t−1}; the nBRC's
weight gradient is one GEMM in torch. Registered as the custom op `memrnn_triton::bistable`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from memrnn.ops._triton import device_guard, recurrence_dtype


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _feedback(w_ptr, h, k, H, DENSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(f_a, f_c)(h) for neurons k: w ⊙ h, or the rows of [W_a; W_c] times h."""
    kmask = k < H
    if DENSE:
        cols = tl.arange(0, BLOCK).to(tl.int64)
        tile = k[:, None] * H + cols[None, :]
        tmask = kmask[:, None] & (cols[None, :] < H)
        w_a = tl.load(w_ptr + tile, mask=tmask, other=0.0).to(ACC)
        w_c = tl.load(w_ptr + (tile + H * H), mask=tmask, other=0.0).to(ACC)
        fa = tl.sum(w_a * h[None, :], axis=1)
        fc = tl.sum(w_c * h[None, :], axis=1)
    else:
        fa = tl.load(w_ptr + k, mask=kmask, other=0.0).to(ACC) * h
        fc = tl.load(w_ptr + (k + H), mask=kmask, other=0.0).to(ACC) * h
    return fa, fc


@triton.jit
def _bistable_forward(
    drive_ptr, h0_ptr, w_ptr, h_ptr, T, H,
    DENSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    bb = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK).to(tl.int64)
    kmask = k < H
    h = tl.load(h0_ptr + (bb * H + k), mask=kmask, other=0.0).to(ACC)
    for t in range(T):
        fa, fc = _feedback(w_ptr, h, k, H, DENSE, ACC, BLOCK)
        d = (bb * T + t) * 3 * H + k
        ta = _tanh(tl.load(drive_ptr + d, mask=kmask, other=0.0).to(ACC) + fa)
        c = tl.sigmoid(tl.load(drive_ptr + (d + H), mask=kmask, other=0.0).to(ACC) + fc)
        u = _tanh(tl.load(drive_ptr + (d + 2 * H), mask=kmask, other=0.0).to(ACC) + (1.0 + ta) * h)
        h = c * h + (1.0 - c) * u
        tl.store(h_ptr + ((bb * T + t) * H + k), h, mask=kmask)


@triton.jit
def _bistable_backward(
    drive_ptr, h0_ptr, w_ptr, h_ptr, gh_ptr, ddrive_ptr, dh0_ptr, dw_ptr, T, H,
    DENSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    bb = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK).to(tl.int64)
    kmask = k < H
    carry = tl.zeros((BLOCK,), ACC)
    gwa = tl.zeros((BLOCK,), ACC)
    gwc = tl.zeros((BLOCK,), ACC)
    for i in range(T):
        t = T - 1 - i
        prev = (bb * T + t - 1) * H + k
        hp = tl.load(h_ptr + prev, mask=kmask & (t > 0), other=0.0).to(ACC)
        hp += tl.load(h0_ptr + (bb * H + k), mask=kmask & (t == 0), other=0.0).to(ACC)
        fa, fc = _feedback(w_ptr, hp, k, H, DENSE, ACC, BLOCK)
        d = (bb * T + t) * 3 * H + k
        ta = _tanh(tl.load(drive_ptr + d, mask=kmask, other=0.0).to(ACC) + fa)
        c = tl.sigmoid(tl.load(drive_ptr + (d + H), mask=kmask, other=0.0).to(ACC) + fc)
        u = _tanh(tl.load(drive_ptr + (d + 2 * H), mask=kmask, other=0.0).to(ACC) + (1.0 + ta) * hp)
        g = tl.load(gh_ptr + ((bb * T + t) * H + k), mask=kmask, other=0.0).to(ACC) + carry
        dph = g * (1.0 - c) * (1.0 - u * u)
        dpc = g * (hp - u) * c * (1.0 - c)
        dpa = dph * hp * (1.0 - ta * ta)
        tl.store(ddrive_ptr + d, dpa, mask=kmask)
        tl.store(ddrive_ptr + (d + H), dpc, mask=kmask)
        tl.store(ddrive_ptr + (d + 2 * H), dph, mask=kmask)
        carry = g * c + dph * (1.0 + ta)
        if DENSE:
            # + [W_a; W_c]ᵀ (∂pa, ∂pc): the weight's columns k against the vectors.
            rows = tl.arange(0, BLOCK).to(tl.int64)
            tile = rows[:, None] * H + k[None, :]
            tmask = (rows[:, None] < H) & kmask[None, :]
            w_a = tl.load(w_ptr + tile, mask=tmask, other=0.0).to(ACC)
            w_c = tl.load(w_ptr + (tile + H * H), mask=tmask, other=0.0).to(ACC)
            carry += tl.sum(w_a * dpa[:, None] + w_c * dpc[:, None], axis=0)
        else:
            carry += dpa * tl.load(w_ptr + k, mask=kmask, other=0.0).to(ACC)
            carry += dpc * tl.load(w_ptr + (k + H), mask=kmask, other=0.0).to(ACC)
            gwa += dpa * hp
            gwc += dpc * hp
    tl.store(dh0_ptr + (bb * H + k), carry, mask=kmask)
    if not DENSE:
        tl.store(dw_ptr + (bb * 2 * H + k), gwa, mask=kmask)
        tl.store(dw_ptr + (bb * 2 * H + H + k), gwc, mask=kmask)


def _launch_args(drive: Tensor) -> tuple[int, int, tl.dtype, int]:
    B, T, H3 = drive.shape
    H = H3 // 3
    acc = tl.float64 if recurrence_dtype(drive.dtype) == torch.float64 else tl.float32
    return B, T, acc, triton.next_power_of_2(H)


@torch.library.custom_op("memrnn_triton::bistable", mutates_args=())
def _bistable_op(drive: Tensor, h0: Tensor, weight: Tensor, dense: bool) -> Tensor:
    drive, h0, weight = drive.contiguous(), h0.contiguous(), weight.contiguous()
    B, T, acc, block = _launch_args(drive)
    h = torch.empty(B, T, h0.shape[1], dtype=recurrence_dtype(drive.dtype), device=drive.device)
    with device_guard(drive):
        _bistable_forward[(B,)](
            drive, h0, weight, h, T, h0.shape[1], DENSE=dense, ACC=acc, BLOCK=block
        )
    return h


@_bistable_op.register_fake
def _(drive: Tensor, h0: Tensor, weight: Tensor, dense: bool) -> Tensor:
    B, T, _ = drive.shape
    return drive.new_empty(B, T, h0.shape[1], dtype=recurrence_dtype(drive.dtype))


@torch.library.custom_op("memrnn_triton::bistable_backward", mutates_args=())
def _bistable_backward_op(
    drive: Tensor, h0: Tensor, weight: Tensor, h: Tensor, gh: Tensor, dense: bool
) -> tuple[Tensor, Tensor, Tensor]:
    drive, h0, weight = drive.contiguous(), h0.contiguous(), weight.contiguous()
    h, gh = h.contiguous(), gh.contiguous()
    B, T, acc, block = _launch_args(drive)
    H = h0.shape[1]
    ddrive, dh0 = torch.empty_like(drive), torch.empty_like(h0)
    dw_rows = torch.empty(B, 2 * H, dtype=h.dtype, device=h.device)
    with device_guard(drive):
        _bistable_backward[(B,)](
            drive, h0, weight, h, gh, ddrive, dh0, dw_rows, T, H,
            DENSE=dense, ACC=acc, BLOCK=block,
        )  # fmt: skip
    if dense:
        # Σ over (batch, t) of (∂pa, ∂pc)ᵀ h_{t−1}: one GEMM.
        h_prev = torch.cat([h0.to(h.dtype).unsqueeze(1), h[:, :-1]], dim=1)
        dpapc = ddrive[..., : 2 * H].reshape(B * T, 2 * H).to(h.dtype)
        dweight = (dpapc.T @ h_prev.reshape(B * T, H)).to(weight.dtype)
    else:
        dweight = dw_rows.sum(dim=0).view(2, H).to(weight.dtype)
    return ddrive, dh0, dweight


@_bistable_backward_op.register_fake
def _(drive, h0, weight, h, gh, dense):
    return torch.empty_like(drive), torch.empty_like(h0), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    drive, h0, weight, dense = inputs
    ctx.save_for_backward(drive, h0, weight, output)
    ctx.dense = dense


def _backward(ctx, gh: Tensor):
    drive, h0, weight, h = ctx.saved_tensors
    ddrive, dh0, dweight = _bistable_backward_op(drive, h0, weight, h, gh, ctx.dense)
    return ddrive, dh0, dweight, None


_bistable_op.register_autograd(_backward, setup_context=_setup_context)


def bistable_layer(drive: Tensor, h0: Tensor, weight: Tensor, dense: bool) -> Tensor:
    """h (B, T, H) of a BRC (`dense` False, weight = [w_a; w_c] (2, H)) or an nBRC (`dense`
    True, weight = [W_a; W_c] (2H, H)) from the input terms drive (B, T, 3H) (rows [0, H) for
    a, [H, 2H) for c, [2H, 3H) for the candidate, biases included) and h0 (B, H);
    differentiable in drive, h0 and weight. h is float32 (float64 for float64 drive)."""
    if drive.dim() != 3 or drive.shape[-1] % 3:
        raise ValueError(f"drive: expected shape (B, T, 3H), got {tuple(drive.shape)}")
    B, T, H3 = drive.shape
    H = H3 // 3
    if tuple(h0.shape) != (B, H):
        raise ValueError(f"h0: expected shape ({B}, {H}), got {tuple(h0.shape)}")
    expected = (2 * H, H) if dense else (2, H)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"weight: expected shape {expected} for drive of {H3} features, "
            f"got {tuple(weight.shape)}"
        )
    return _bistable_op(drive, h0, weight, bool(dense))


__all__ = ["bistable_layer"]
