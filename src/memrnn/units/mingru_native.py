"""Fused CPU kernels for the minGRU recurrence on the joint projection [z_pre, h̃] (numba).

The minGRU projects x once to p = [z_pre, h̃] of width 2H (`memrnn.units.mingru`). From torch
ops its parallel mode splits p, takes σ, forms a = 1 − z and b = z h̃, scans, and in the
backward pass builds the gradients of a, b, z, z_pre and h̃ one op at a time and concatenates
them again. Here, with z = σ(z_pre) from one torch op, one forward kernel reads z and h̃ and
writes h, and one backward kernel reads z, h̃, h and dL/dh and writes dL/dp directly:

    g_t = dL/dh_t + (1 − z_{t+1}) g_{t+1},   dL/dh_0 = (1 − z_1) g_1
    dL/dz_pre_t = g_t (h̃_t − h_{t−1}) z_t (1 − z_t),   dL/dh̃_t = g_t z_t

Work is split over threads by (batch, channel-chunk) jobs as in `memrnn.scan.native`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memrnn.scan.jit import compile_pair, job_bounds
from memrnn.scan.native import _chunk_size, _empty

try:
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatching
    numba = None

AVAILABLE = numba is not None
SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Problems with fewer elements (B T H) than this run single-threaded, as the scan does.
PARALLEL_MIN_ELEMENTS = 1 << 18

if AVAILABLE:

    def _forward_loop(z, p, h0, h, chunk):  # pragma: no cover - compiled
        B, T, H = z.shape
        n_chunks = (H + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, H)
            state = h0[ib, m0:m1].copy()
            for t in range(T):
                z_row = z[ib, t, m0:m1]
                cand_row = p[ib, t, H + m0 : H + m1]
                h_row = h[ib, t, m0:m1]
                for m in range(m1 - m0):
                    zv = z_row[m]
                    value = (1.0 - zv) * state[m] + zv * cand_row[m]
                    state[m] = value
                    h_row[m] = value

    def _backward_loop(z, p, h0, h, gh, dp, dh0, chunk):  # pragma: no cover - compiled
        B, T, H = z.shape
        n_chunks = (H + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, H)
            width = m1 - m0
            # Private carry (see memrnn.scan.native on why not accumulate in an output).
            carry = np.zeros(width, dtype=h.dtype)
            for t in range(T - 1, -1, -1):
                z_row = z[ib, t, m0:m1]
                cand_row = p[ib, t, H + m0 : H + m1]
                gh_row = gh[ib, t, m0:m1]
                dz_row = dp[ib, t, m0:m1]
                dcand_row = dp[ib, t, H + m0 : H + m1]
                h_prev = h0[ib, m0:m1] if t == 0 else h[ib, t - 1, m0:m1]
                for m in range(width):
                    zv = z_row[m]
                    g = gh_row[m] + carry[m]
                    dz_row[m] = g * (cand_row[m] - h_prev[m]) * zv * (1.0 - zv)
                    dcand_row[m] = g * zv
                    carry[m] = (1.0 - zv) * g
            dh0[ib, m0:m1] = carry

    # error_model="numpy": no zero-division checks in the loops (see memrnn.units.mru_native).
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")


def supports(p: Tensor) -> bool:
    """Whether the fused kernels can run this projection: numba, CPU, float32 or float64."""
    return AVAILABLE and p.device.type == "cpu" and p.dtype in SUPPORTED_DTYPES


class _FusedMinGRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, h0):
        p, h0 = p.contiguous(), h0.contiguous()
        B, T, H2 = p.shape
        H = H2 // 2
        z = torch.sigmoid(p[..., :H]).contiguous()  # (B, T, H)
        h = _empty((B, T, H), p.dtype)
        kernel = _forward_threaded if z.numel() >= PARALLEL_MIN_ELEMENTS else _forward_serial
        kernel(z.numpy(), p.numpy(), h0.numpy(), h.numpy(), _chunk_size(B, H))
        ctx.save_for_backward(z, p, h0, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        z, p, h0, h = ctx.saved_tensors
        B, T, H = z.shape
        dp = _empty(tuple(p.shape), p.dtype)
        dh0 = torch.empty_like(h0)
        kernel = _backward_threaded if z.numel() >= PARALLEL_MIN_ELEMENTS else _backward_serial
        kernel(
            z.numpy(),
            p.numpy(),
            h0.numpy(),
            h.numpy(),
            gh.contiguous().numpy(),
            dp.numpy(),
            dh0.numpy(),
            _chunk_size(B, H),
        )
        return dp, dh0


def fused_mingru_scan(p: Tensor, h0: Tensor) -> Tensor:
    """h of the minGRU recurrence for the joint projection p = [z_pre, h̃] (B, T, 2H), h0 (B, H).

    Differentiable with respect to p and h0; CPU float32/float64 (see `supports`).
    """
    return _FusedMinGRUScan.apply(p, h0)


__all__ = ["AVAILABLE", "SUPPORTED_DTYPES", "fused_mingru_scan", "supports"]
