"""Compiled CPU kernels for the SRC recurrence: forward and backward through time (numba).

Once the integrator input u_t = W_s s_t is known for the whole sequence (one matmul), the SRC
is elementwise per (batch, neuron) and sequential only in time. The kernels walk time in an
outer loop and the neurons of one batch row in a contiguous inner loop that LLVM vectorises;
work is split over threads by (batch, neuron-chunk) jobs, as in `memrnn.ops.scan.numba`, so every
thread owns whole time series. Small problems run a single-threaded build of the same kernel.

Forward (per neuron, σ the logistic function):

    i_t = α_i i_{t−1} + u_t,   θ_t = tanh(i_t / ρ)
    h_t = tanh(((ρ θ_t + b) + r h_{t−1}) + r_s hs_{t−1})
    σ_t = σ(10 (h_{t−1} − 0.5)),   z_t = z_hyp − (z_hyp − z_dep) σ_t
    hs_t = z_t hs_{t−1} + (1 − z_t) h_{t−1},   y_t = ReLU(h_t)

grouped as `memrnn.ops.src.naive.src_step` groups them. For the backward pass it saves θ, h and
hs per step.

Backward, walking t = T−1 … 0 with gh, ghs, gi the gradients reaching h_t, hs_t and i_{t+1}
from later steps (initially those of the final state):

    gp_t = (gh + gy_t ReLU'(h_t)) (1 − h_t²)                      ReLU' := 1 if straight-through
    g_t  = α_i gi + gp_t (1 − θ_t²)                               = dL/du_t = dL/di_t
    k_t  = (1 − z_t) − 10 (z_hyp − z_dep) σ_t (1 − σ_t) (hs_{t−1} − h_{t−1})
    gh ← r gp_t + k_t ghs,   ghs ← r_s gp_t + z_t ghs,   gi ← g_t  (gh, ghs ← 0 when detached)

The carried gradients stay in float64 and are set to 0 below 1e-30 in magnitude (ours): a
gradient fading back through time otherwise becomes subnormal, and float32 training ran 2x
slower than float64 on the machine this was tuned on.

then dL/db = Σ_{batch, t} gp_t, dL/di_0 = α_i g_0, dL/dh_0 = gh, dL/dhs_0 = ghs.

tanh and σ are `memrnn.ops._cpu`'s vectorisable ones (libm's run one element at a time).
float32 tensors are computed in float64 registers and rounded to float32 at every stored
state, so the state is rounded once per step as in the float32 torch loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memrnn.ops._cpu import (
    NUMBA_AVAILABLE,
    check_kernel_input,
    chunk_size,
    compile_pair,
    empty,
    flush_tiny,
    job_bounds,
    njit,
    prange,
    vec_sigmoid,
    vec_tanh,
)

AVAILABLE = NUMBA_AVAILABLE
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# Problems with fewer elements (B T N) than this run single-threaded. On the 2-core CPU
# this was tuned on, threads gained little (3-layer benchmark layer: 23 vs 24 ms forward, 80 vs
# 92 ms forward + backward), and after a parallel region under numba's OpenMP threading layer
# the torch ops that followed in the same process ran up to 50x slower (measured: a torch step
# loop went from 0.06 s to 3.4 s; not with the workqueue layer). So threads are kept for very
# large problems only.
PARALLEL_MIN_ELEMENTS = 1 << 23

if AVAILABLE:

    @njit(inline="always", error_model="numpy")
    def _cell(u, i, h, hs, b, alpha, rho, r, r_s, z_hyp, dz):  # pragma: no cover
        i_new = alpha * i + u
        th = vec_tanh(i_new / rho)
        h_new = vec_tanh(((rho * th + b) + r * h) + r_s * hs)
        z = z_hyp - dz * vec_sigmoid(10.0 * (h - 0.5))
        hs_new = z * hs + (1.0 - z) * h
        return i_new, th, h_new, hs_new

    def _forward_loop(
        u, i0, h0, hs0, bias, consts, y, th_seq, h_seq, hs_seq, i_out, h_out, hs_out, save, chunk
    ):  # pragma: no cover - compiled
        B, T, N = u.shape
        alpha, rho, r, r_s = consts[0], consts[1], consts[2], consts[3]
        z_hyp, dz = consts[4], consts[5]
        n_chunks = (N + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, N)
            L = m1 - m0
            # Row views indexed from 0 keep numba's negative-index handling out of the inner
            # loops, which would otherwise stop LLVM from vectorising them.
            b_row = bias[m0:m1]
            i = i0[ib, m0:m1].copy()
            h = h0[ib, m0:m1].copy()
            hs = hs0[ib, m0:m1].copy()
            for t in range(T):
                u_row = u[ib, t, m0:m1]
                y_row = y[ib, t, m0:m1]
                if save:
                    th_row = th_seq[ib, t, m0:m1]
                    h_row = h_seq[ib, t, m0:m1]
                    hs_row = hs_seq[ib, t, m0:m1]
                    for k in range(L):
                        i_n, th, h_n, hs_n = _cell(
                            u_row[k], i[k], h[k], hs[k], b_row[k], alpha, rho, r, r_s, z_hyp, dz
                        )
                        i[k] = i_n
                        h[k] = h_n
                        hs[k] = hs_n
                        y_row[k] = max(h_n, 0.0)
                        th_row[k] = th
                        h_row[k] = h_n
                        hs_row[k] = hs_n
                else:
                    for k in range(L):
                        i_n, th, h_n, hs_n = _cell(
                            u_row[k], i[k], h[k], hs[k], b_row[k], alpha, rho, r, r_s, z_hyp, dz
                        )
                        i[k] = i_n
                        h[k] = h_n
                        hs[k] = hs_n
                        y_row[k] = max(h_n, 0.0)
            i_out[ib, m0:m1] = i
            h_out[ib, m0:m1] = h
            hs_out[ib, m0:m1] = hs

    @njit(inline="always", error_model="numpy")
    def _adjoint(
        gy, h, th, h_prev, hs_prev, gi, gh, ghs, consts, straight, detach
    ):  # pragma: no cover # noqa: E501
        r, r_s, z_hyp, dz = consts[2], consts[3], consts[4], consts[5]
        g_out = gy if (straight or h > 0.0) else 0.0
        gp = (gh + g_out) * (1.0 - h * h)
        g = gi + gp * (1.0 - th * th)
        sg = vec_sigmoid(10.0 * (h_prev - 0.5))
        z = z_hyp - dz * sg
        k = (1.0 - z) - 10.0 * dz * sg * (1.0 - sg) * (hs_prev - h_prev)
        gh_new = 0.0 if detach else r * gp + k * ghs
        ghs_new = 0.0 if detach else r_s * gp + z * ghs
        return gp, g, gh_new, ghs_new

    def _backward_loop(
        gy,
        gi_T,
        gh_T,
        ghs_T,
        th_seq,
        h_seq,
        hs_seq,
        h0,
        hs0,
        consts,
        straight,
        detach,
        gu,
        gbias,
        gi0,
        gh0,
        ghs0,
        chunk,
    ):  # pragma: no cover - compiled
        B, T, N = gy.shape
        alpha = consts[0]
        n_chunks = (N + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, N)
            L = m1 - m0
            # gi: the gradient reaching i_t from later steps (α_i dL/di_{t+1}, or the final
            # state's at t = T−1); gb accumulates dL/db in float64. Row views as in the forward.
            gi = gi_T[ib, m0:m1].astype(np.float64)
            gh = gh_T[ib, m0:m1].astype(np.float64)
            ghs = ghs_T[ib, m0:m1].astype(np.float64)
            gb = np.zeros(L, dtype=np.float64)
            for t in range(T - 1, -1, -1):
                gy_row = gy[ib, t, m0:m1]
                h_row = h_seq[ib, t, m0:m1]
                th_row = th_seq[ib, t, m0:m1]
                gu_row = gu[ib, t, m0:m1]
                if t > 0:
                    hp_row = h_seq[ib, t - 1, m0:m1]
                    hsp_row = hs_seq[ib, t - 1, m0:m1]
                else:
                    hp_row = h0[ib, m0:m1]
                    hsp_row = hs0[ib, m0:m1]
                for k in range(L):
                    gp, g, gh_n, ghs_n = _adjoint(
                        gy_row[k],
                        h_row[k],
                        th_row[k],
                        hp_row[k],
                        hsp_row[k],
                        gi[k],
                        gh[k],
                        ghs[k],
                        consts,
                        straight,
                        detach,
                    )
                    gb[k] += gp
                    gu_row[k] = g
                    gi[k] = flush_tiny(alpha * g)
                    gh[k] = flush_tiny(gh_n)
                    ghs[k] = flush_tiny(ghs_n)
            gbias[ib, m0:m1] = gb
            gi0[ib, m0:m1] = gi
            gh0[ib, m0:m1] = gh
            ghs0[ib, m0:m1] = ghs

    # Compiled lazily per dtype, threaded for large problems and single-threaded for small
    # ones (see memrnn.ops.scan.numba), and cached on disk.
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")


def _check(t: Tensor) -> None:
    check_kernel_input(t, "the numba SRC kernel", SUPPORTED_DTYPES, AVAILABLE)


def _constants(c) -> np.ndarray:
    return np.array([c.alpha_i, c.rho, c.r, c.r_s, c.z_hyp, c.z_hyp - c.z_dep], dtype=np.float64)


def _arr(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def src_forward(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, c, save: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Runs the SRC over u (B, T, N) from (i0, h0, hs0) (B, N) with bias (N,), constants `c`
    (an `SRCConstants`). Returns y (B, T, N), the final (i, h, hs), and when `save` the
    per-step (θ, h, hs) that `src_backward` needs."""
    _check(u)
    B, T, N = u.shape
    dtype = u.dtype
    y = empty((B, T, N), dtype)
    saved = tuple(empty((B, T, N), dtype) for _ in range(3)) if save else None
    # Unused outputs still need the right type for the compiled signature.
    dummy = np.empty((1, 1, 1), dtype=y.numpy().dtype)
    seqs = [s.numpy() for s in saved] if saved is not None else [dummy, dummy, dummy]
    finals = [torch.empty(B, N, dtype=dtype) for _ in range(3)]
    kernel = _forward_threaded if u.numel() >= PARALLEL_MIN_ELEMENTS else _forward_serial
    kernel(
        _arr(u),
        _arr(i0),
        _arr(h0),
        _arr(hs0),
        _arr(bias.reshape(-1).expand(N)),
        _constants(c),
        y.numpy(),
        *seqs,
        *(f.numpy() for f in finals),
        save,
        chunk_size(B, N),
    )
    return y, finals[0], finals[1], finals[2], saved


def src_backward(
    gy: Tensor,
    g_final: tuple[Tensor, Tensor, Tensor],
    saved: tuple[Tensor, Tensor, Tensor],
    h0: Tensor,
    hs0: Tensor,
    c,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dL/du (B, T, N), dL/db (N,), dL/di0, dL/dh0, dL/dhs0) from the output
    gradient gy (B, T, N) and the final-state gradients g_final = (gi, gh, ghs) (B, N)."""
    th_seq, h_seq, hs_seq = saved
    B, T, N = h_seq.shape
    dtype = h_seq.dtype
    gu = empty((B, T, N), dtype)
    gbias = torch.empty(B, N, dtype=torch.float64)
    grads0 = [torch.empty(B, N, dtype=dtype) for _ in range(3)]
    kernel = _backward_threaded if h_seq.numel() >= PARALLEL_MIN_ELEMENTS else _backward_serial
    kernel(
        _arr(gy),
        *(_arr(g) for g in g_final),
        th_seq.numpy(),
        h_seq.numpy(),
        hs_seq.numpy(),
        _arr(h0),
        _arr(hs0),
        _constants(c),
        bool(c.straight_through),
        bool(c.detach_recurrence),
        gu.numpy(),
        gbias.numpy(),
        *(g.numpy() for g in grads0),
        chunk_size(B, N),
    )
    return gu, gbias.sum(dim=0).to(dtype), grads0[0], grads0[1], grads0[2]


class _SRCNative(torch.autograd.Function):
    """The SRC over a sequence as one autograd node, both passes in the compiled kernels."""

    @staticmethod
    def forward(ctx, u, i0, h0, hs0, bias, c):  # type: ignore[override]
        y, i, h, hs, saved = src_forward(u, i0, h0, hs0, bias, c, save=True)
        ctx.save_for_backward(*saved, h0, hs0)
        ctx.constants = c
        ctx.bias_shape = bias.shape
        return y, i, h, hs

    @staticmethod
    def backward(ctx, gy, gi, gh, ghs):  # type: ignore[override]
        th_seq, h_seq, hs_seq, h0, hs0 = ctx.saved_tensors
        zeros = h0.new_zeros(h0.shape)
        gy = torch.zeros_like(h_seq) if gy is None else gy
        g_final = tuple(zeros if g is None else g for g in (gi, gh, ghs))
        gu, gbias, gi0, gh0, ghs0 = src_backward(
            gy, g_final, (th_seq, h_seq, hs_seq), h0, hs0, ctx.constants
        )
        gbias = gbias.reshape(ctx.bias_shape) if ctx.needs_input_grad[4] else None
        return gu, gi0, gh0, ghs0, gbias, None


def src_loop(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, c
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SRC over u (B, T, N) in the compiled kernels: (y, i_T, h_T, hs_T), differentiable.

    Without gradients to track, the forward kernel runs alone and saves nothing."""
    inputs = (u, i0, h0, hs0, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _SRCNative.apply(u, i0, h0, hs0, bias, c)
    y, i, h, hs, _ = src_forward(u, i0, h0, hs0, bias, c, save=False)
    return y, i, h, hs


__all__ = [
    "AVAILABLE",
    "SUPPORTED_DTYPES",
    "src_backward",
    "src_forward",
    "src_loop",
]
