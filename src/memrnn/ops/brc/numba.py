"""BRC and nBRC over a sequence as one autograd node on CPU (numba): forward and backward
through time in compiled kernels.

With the input terms `drive` = [U_a x_t + b_a | U_c x_t + b_c | U x_t + b] (B, T, 3H) computed
for the whole sequence in one matmul (`memrnn.units.brc`, docs/units/brc.md), a bistable cell
is, per step,

    a_t = 1 + tanh(pa_t),  pa_t = drive_a + f_a(h_{t−1})
    c_t = σ(pc_t),         pc_t = drive_c + f_c(h_{t−1})
    u_t = tanh(drive_h + a_t h_{t−1}),   h_t = c_t h_{t−1} + (1 − c_t) u_t

with the memory feedback f = (w_a ⊙ h, w_c ⊙ h) for the BRC (weight (2, H)) or (W_a h, W_c h)
for the nBRC (weight (2H, H), "dense"). The recurrence is nonlinear in h, so time stays a
sequential loop; the torch loop runs it as a dozen small ops per step and as many autograd
nodes. Here every batch row is one job (rows never interact), walking time with its neurons in
a contiguous inner loop that LLVM vectorises, using `memrnn.ops._cpu`'s tanh and σ (computed
in float64 registers; float32 states are rounded once per step when stored). The forward pass
keeps tanh(pa), c and u per step for the backward pass, which walks time backwards with the
gradient g_t = ∂L/∂h_t + (carry from step t + 1):

    ∂pa_t = g (1 − c) (1 − u²) h_{t−1} (1 − tanh²(pa)),   ∂pc_t = g (h_{t−1} − u) c (1 − c),
    ∂(drive_h)_t = g (1 − c) (1 − u²)
    carry = g c + ∂(drive_h)_t a_t + f'ᵀ (∂pa_t, ∂pc_t)

writing ∂L/∂drive (B, T, 3H), and accumulating ∂L/∂w_a = Σ ∂pa h_{t−1}, ∂L/∂w_c likewise (BRC);
for the nBRC ∂L/∂[W_a; W_c] = Σ (∂pa, ∂pc)ᵀ h_{t−1} is one GEMM after the kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memrnn.ops._cpu import (
    NUMBA_AVAILABLE,
    check_kernel_input,
    compile_pair,
    empty,
    flush_tiny,
    prange,
    vec_sigmoid,
    vec_tanh,
)

AVAILABLE = NUMBA_AVAILABLE
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# Problems with fewer elements (B T H) than this, or a single batch row, run single-threaded.
PARALLEL_MIN_ELEMENTS = 1 << 16

if AVAILABLE:

    def _forward_loop(drive, h0, weight, weight_t, dense, h, gates, keep):  # pragma: no cover
        """h (B, T, H) from drive (B, T, 3H) and h0 (B, H); `gates` (B, T or 1, 3H) receives
        [tanh(pa) | c | u] per step (every step when `keep`, else only a scratch row)."""
        B, T, H3 = drive.shape
        H = H3 // 3
        for b in prange(B):
            # In the tensors' dtype: the state as stored, and the feedback sums as torch's
            # float32 matmul forms them (float32 vectors are twice as wide as float64 ones).
            hp = h0[b].copy()
            fa = np.empty(H, hp.dtype)
            fc = np.empty(H, hp.dtype)
            for t in range(T):
                if dense:
                    # [W_a; W_c] h as a sum of columns: weight_t (H, 2H) is its transpose.
                    fa[:] = 0.0
                    fc[:] = 0.0
                    for k in range(H):
                        v = hp[k]
                        col = weight_t[k]
                        for j in range(H):
                            fa[j] += col[j] * v
                            fc[j] += col[H + j] * v
                else:
                    w_a = weight[0]
                    w_c = weight[1]
                    for k in range(H):
                        fa[k] = w_a[k] * hp[k]
                        fc[k] = w_c[k] * hp[k]
                d = drive[b, t]
                g = gates[b, t if keep else 0]
                out = h[b, t]
                for k in range(H):
                    ta = vec_tanh(d[k] + fa[k])
                    c = vec_sigmoid(d[H + k] + fc[k])
                    u = vec_tanh(d[2 * H + k] + (1.0 + ta) * hp[k])
                    out[k] = c * hp[k] + (1.0 - c) * u
                    g[k] = ta
                    g[H + k] = c
                    g[2 * H + k] = u
                hp[:] = out

    def _backward_loop(gh, h0, h, gates, weight, dense, ddrive, gh0, gw):  # pragma: no cover
        """∂L/∂drive into ddrive (B, T, 3H) and ∂L/∂h0 into gh0 (B, H) from gh = ∂L/∂h
        (B, T, H); for the BRC, per batch row ∂L/∂[w_a | w_c] into gw (B, 2H), float64."""
        B, T, H3 = ddrive.shape
        H = H3 // 3
        for b in prange(B):
            carry = np.zeros(H, np.float64)
            back = np.empty(H, weight.dtype)  # [W_a; W_c]ᵀ (∂pa, ∂pc), in the dtype as above
            gwa = np.zeros(H, np.float64)
            gwc = np.zeros(H, np.float64)
            for t in range(T - 1, -1, -1):
                hp = h[b, t - 1] if t > 0 else h0[b]
                g_in = gh[b, t]
                gt = gates[b, t]
                dd = ddrive[b, t]
                for k in range(H):
                    g = g_in[k] + carry[k]
                    ta = gt[k]
                    c = gt[H + k]
                    u = gt[2 * H + k]
                    dph = g * (1.0 - c) * (1.0 - u * u)
                    dpc = g * (hp[k] - u) * c * (1.0 - c)
                    dpa = dph * hp[k] * (1.0 - ta * ta)
                    dd[k] = dpa
                    dd[H + k] = dpc
                    dd[2 * H + k] = dph
                    carry[k] = g * c + dph * (1.0 + ta)
                if dense:
                    # + [W_a; W_c]ᵀ (∂pa, ∂pc) as a sum of rows of the weight (2H, H).
                    back[:] = 0.0
                    for j in range(H):
                        va = dd[j]
                        vc = dd[H + j]
                        row_a = weight[j]
                        row_c = weight[H + j]
                        for k in range(H):
                            back[k] += row_a[k] * va + row_c[k] * vc
                    for k in range(H):
                        carry[k] += back[k]
                else:
                    w_a = weight[0]
                    w_c = weight[1]
                    for k in range(H):
                        dpa = dd[k]
                        dpc = dd[H + k]
                        carry[k] += dpa * w_a[k] + dpc * w_c[k]
                        gwa[k] += dpa * hp[k]
                        gwc[k] += dpc * hp[k]
                for k in range(H):
                    carry[k] = flush_tiny(carry[k])
            gh0[b] = carry
            gw[b, :H] = gwa
            gw[b, H:] = gwc

    # error_model="numpy": no zero-division checks in the loops (see memrnn.ops.mru.numba).
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")


def _threaded(drive: Tensor) -> bool:
    B = drive.shape[0]
    return B > 1 and drive.numel() // 3 >= PARALLEL_MIN_ELEMENTS


def _arr(t: Tensor):
    return t.detach().contiguous().numpy()


class _BistableLayer(torch.autograd.Function):
    """The BRC/nBRC recurrence over a sequence as one autograd node (see the module notes)."""

    @staticmethod
    def forward(ctx, drive, h0, weight, dense, keep):  # type: ignore[override]
        B, T, H3 = drive.shape
        H = H3 // 3
        h = empty((B, T, H), drive.dtype)
        # The gates are kept only when a backward pass can come (`keep`: grad mode at the call).
        save = keep and any(ctx.needs_input_grad[:3])
        gates = empty((B, T if save else 1, H3), drive.dtype)
        kernel = _forward_threaded if _threaded(drive) else _forward_serial
        w = _arr(weight)
        w_t = np.ascontiguousarray(w.T)
        kernel(_arr(drive), _arr(h0), w, w_t, dense, h.numpy(), gates.numpy(), save)
        if save:
            ctx.save_for_backward(h0, weight, h, gates)
            ctx.dense = dense
        return h

    @staticmethod
    def backward(ctx, gh):  # type: ignore[override]
        h0, weight, h, gates = ctx.saved_tensors
        B, T, H = h.shape
        dtype = h.dtype
        ddrive = empty((B, T, 3 * H), dtype)
        gh0 = torch.empty(B, H, dtype=dtype)
        gw = torch.empty(B, 2 * H, dtype=torch.float64)
        kernel = _backward_threaded if _threaded(ddrive) else _backward_serial
        kernel(
            _arr(gh),
            _arr(h0),
            h.detach().numpy(),
            gates.numpy(),
            _arr(weight),
            ctx.dense,
            ddrive.numpy(),
            gh0.numpy(),
            gw.numpy(),
        )
        gweight = None
        if ctx.needs_input_grad[2]:
            if ctx.dense:
                # Σ over (batch, t) of (∂pa, ∂pc)ᵀ h_{t−1}: one GEMM.
                h_prev = torch.cat([h0.detach().unsqueeze(1), h.detach()[:, :-1]], dim=1)
                gweight = ddrive[..., : 2 * H].reshape(B * T, 2 * H).T @ h_prev.reshape(B * T, H)
            else:
                gweight = gw.sum(dim=0).to(dtype).view(2, H)
        return ddrive, gh0, gweight, None, None


def bistable_layer(drive: Tensor, h0: Tensor, weight: Tensor, dense: bool) -> Tensor:
    """`memrnn.ops.brc.bistable_layer` in the compiled kernels (CPU float32/float64 tensors
    of one dtype; raises RuntimeError otherwise)."""
    check_kernel_input(drive, "the numba BRC kernel", SUPPORTED_DTYPES, AVAILABLE)
    if h0.device != drive.device or h0.dtype != drive.dtype or weight.dtype != drive.dtype:
        raise RuntimeError(
            "the numba BRC kernel needs h0 and weight of drive's dtype and device, got drive "
            f"{drive.dtype} on {drive.device}, h0 {h0.dtype} on {h0.device}, weight {weight.dtype}"
        )
    return _BistableLayer.apply(drive, h0, weight, dense, torch.is_grad_enabled())


__all__ = ["AVAILABLE", "SUPPORTED_DTYPES", "bistable_layer"]
