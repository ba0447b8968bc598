"""Fused CPU kernels for the MRU recurrence: gates, scan and surrogate gradients in one pass.

The MRU's parallel form is a linear scan whose coefficients come from elementwise gates
(`memrnn.units.mru`):

    u_t = |c_t| − β_t,   z_t = H(u_t),   s_t = sign(c_t)
    h_t = a_t h_{t−1} + b_t,   a_t = 1 − z_t + ε z_t,   b_t = z_t s_t

Built from torch ops, the step function, the sign, the coefficients and their surrogate
backward each stream (B, T, N) tensors through memory, about a dozen passes for one scan.
Here one forward kernel reads c and β and writes h (plus the write count for the write-rate
penalty), and one backward kernel reads c, β, h and dL/dh and writes dL/dc and dL/dβ,
recomputing z, s and a instead of storing them. With g_t the total gradient reaching h_t
(walking t = T−1 … 0) and ρ the gradient of the mean write rate spread over the B·T·N gates:

    g_t = dL/dh_t + a_{t+1} g_{t+1},   dL/dh_0 = a_1 g_1
    dz_t = g_t ((ε − 1) h_{t−1} + s_t) + ρ,   ds_t = g_t z_t
    dL/dc_t = 2 σ(c_t) ds_t + sgn(c_t) σ(u_t) dz_t,   dL/dβ_t = −σ(u_t) dz_t

with σ the surrogate derivative of H (`memrnn.units.surrogate`), the same chain of terms that
autograd builds through the torch ops. When the kernel is given the raw threshold projection
(`beta_abs=True`) it takes β = |β_raw| itself and returns dL/dβ_raw = sgn(β_raw) dL/dβ.

Work is split over threads by (batch, channel-chunk) jobs as in `memrnn.scan.native`: each job
owns whole time series, so no two threads write the same element.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from memrnn.scan.jit import compile_pair, job_bounds
from memrnn.scan.native import _chunk_size, _empty

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatching
    numba = None

AVAILABLE = numba is not None
SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Surrogate names the kernels know, as the integer codes they branch on.
SURROGATE_CODES = {"atan": 0, "fast-sigmoid": 1, "triangle": 2, "straight-through": 3}
# Problems with fewer elements (B T N) than this run single-threaded, as the scan does.
PARALLEL_MIN_ELEMENTS = 1 << 18

if AVAILABLE:
    # The kernels compute in the dtype of their arrays: every constant comes from `consts`, an
    # array of that dtype, since a Python float literal would make numba promote float32 work
    # to float64 (measured: the backward kernel at B = 16, T = 1024, N = 128 took 6.7 ms with
    # float64 arithmetic on float32 data, half-width vectors and conversions both ways).
    # consts = [epsilon, rate gradient, k, pi k, 1].

    @njit(inline="always", error_model="numpy")
    def _slope(kind, k, pik, one, u):  # pragma: no cover - compiled
        """The surrogate derivative sigma_k(u) of the Heaviside step (see surrogate.py)."""
        if kind == 0:
            pku = pik * u
            return k / (one + pku * pku)
        if kind == 1:
            d = one + k * abs(u)
            return k / ((one + one) * d * d)
        if kind == 2:
            return k * max(one - one, one - k * abs(u))
        return k

    # H and sgn as selects rather than early returns: the loops vectorise better (backward
    # kernel measured 4.0 -> 3.4 ms at B = 16, T = 1024, N = 128, two threads).
    @njit(inline="always", error_model="numpy")
    def _step(u, one):  # pragma: no cover - compiled
        """H(u) with H(0) = 1; NaN stays NaN, as in `surrogate.heaviside`."""
        return one if u >= one - one else (u if u != u else one - one)

    @njit(inline="always", error_model="numpy")
    def _sgn(v, one):  # pragma: no cover - compiled
        """torch.sgn for reals: -1, 0 or +1 (the derivative of |v|)."""
        zero = one - one
        return one if v > zero else (-one if v < zero else zero)

    def _forward_loop(c, beta, beta_abs, h0, consts, h, writes, chunk):  # pragma: no cover
        B, T, M = c.shape
        eps, one = consts[0], consts[4]
        step_b = 1 if beta.shape[0] > 1 else 0
        step_t = 1 if beta.shape[1] > 1 else 0
        n_chunks = (M + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, M)
            width = m1 - m0
            # Private state and write counter: see memrnn.scan.native on why not read h back.
            state = h0[ib, m0:m1].copy()
            count = np.zeros(width, dtype=h.dtype)
            for t in range(T):
                c_row = c[ib, t, m0:m1]
                beta_row = beta[ib * step_b, t * step_t, m0:m1]
                h_row = h[ib, t, m0:m1]
                for m in range(width):
                    cv = c_row[m]
                    bv = abs(beta_row[m]) if beta_abs else beta_row[m]
                    z = _step(abs(cv) - bv, one)
                    s = (one + one) * _step(cv, one) - one
                    value = (one - z + eps * z) * state[m] + z * s
                    state[m] = value
                    h_row[m] = value
                    count[m] += z
            writes[job] = count.sum()

    def _backward_loop(
        c, beta, beta_abs, h0, h, gh, consts, kind, dc, dbeta, dh0, chunk
    ):  # pragma: no cover - compiled
        B, T, M = c.shape
        eps, rate_grad, k, pik, one = consts[0], consts[1], consts[2], consts[3], consts[4]
        two = one + one
        step_b = 1 if beta.shape[0] > 1 else 0
        step_t = 1 if beta.shape[1] > 1 else 0
        n_chunks = (M + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, M)
            width = m1 - m0
            # carry = a_{t+1} g_{t+1}: the gradient flowing back from the next step.
            carry = np.zeros(width, dtype=h.dtype)
            for t in range(T - 1, -1, -1):
                c_row = c[ib, t, m0:m1]
                beta_row = beta[ib * step_b, t * step_t, m0:m1]
                gh_row = gh[ib, t, m0:m1]
                dc_row = dc[ib, t, m0:m1]
                dbeta_row = dbeta[ib, t, m0:m1]
                h_prev = h0[ib, m0:m1] if t == 0 else h[ib, t - 1, m0:m1]
                for m in range(width):
                    cv = c_row[m]
                    braw = beta_row[m]
                    bv = abs(braw) if beta_abs else braw
                    u = abs(cv) - bv
                    z = _step(u, one)
                    s = two * _step(cv, one) - one
                    g = gh_row[m] + carry[m]
                    dz = g * ((eps - one) * h_prev[m] + s) + rate_grad
                    du = dz * _slope(kind, k, pik, one, u)
                    dc_row[m] = two * _slope(kind, k, pik, one, cv) * g * z + _sgn(cv, one) * du
                    dbeta_row[m] = -du * _sgn(braw, one) if beta_abs else -du
                    carry[m] = (one - z + eps * z) * g
            dh0[ib, m0:m1] = carry

    # Threaded for large problems, single-threaded for small ones (see memrnn.scan.native).
    # error_model="numpy": no zero-division checks, which kept the loops from vectorising
    # (backward kernel at B = 16, T = 1024, N = 128: 44 ms with them, 5 ms without).
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")


def supports(c: Tensor, surrogate: object) -> bool:
    """Whether the fused kernels can run this problem: numba, CPU, float32/64, a named surrogate."""
    return (
        AVAILABLE
        and c.device.type == "cpu"
        and c.dtype in SUPPORTED_DTYPES
        and isinstance(surrogate, str)
        and surrogate in SURROGATE_CODES
    )


def _constants(dtype: torch.dtype, epsilon: float, rate_grad: float, k: float) -> np.ndarray:
    """The kernels' `consts` in the problem's dtype: [epsilon, rate gradient, k, pi k, 1]."""
    values = [epsilon, rate_grad, k, math.pi * k, 1.0]
    return np.array(values, dtype=np.float32 if dtype == torch.float32 else np.float64)


def _jobs(batch: int, channels: int) -> tuple[int, int]:
    chunk = _chunk_size(batch, channels)
    return chunk, batch * ((channels + chunk - 1) // chunk)


class _FusedMRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, beta, h0, epsilon, beta_abs, kind, sharpness):
        c, h0 = c.contiguous(), h0.contiguous()
        beta3 = beta.reshape((1,) * (3 - beta.dim()) + tuple(beta.shape)).contiguous()
        B, T, N = c.shape
        chunk, n_jobs = _jobs(B, N)
        h = _empty((B, T, N), c.dtype)
        writes = np.zeros(n_jobs, dtype=np.float64)
        threaded = c.numel() >= PARALLEL_MIN_ELEMENTS
        kernel = _forward_threaded if threaded else _forward_serial
        consts = _constants(c.dtype, epsilon, 0.0, sharpness)
        kernel(c.numpy(), beta3.numpy(), beta_abs, h0.numpy(), consts, h.numpy(), writes, chunk)
        rate = torch.tensor(writes.sum() / c.numel(), dtype=c.dtype)
        ctx.save_for_backward(c, beta3, h0, h)
        ctx.beta_shape = beta.shape
        ctx.options = (epsilon, beta_abs, kind, sharpness)
        return h, rate

    @staticmethod
    def backward(ctx, gh, grad_rate):
        c, beta3, h0, h = ctx.saved_tensors
        epsilon, beta_abs, kind, sharpness = ctx.options
        B, T, N = c.shape
        if gh is None:
            gh = torch.zeros_like(h)
        rate_grad = 0.0 if grad_rate is None else float(grad_rate) / c.numel()
        chunk, _ = _jobs(B, N)
        dc = _empty((B, T, N), c.dtype)
        dbeta = _empty((B, T, N), c.dtype)
        dh0 = torch.empty_like(h0)
        threaded = c.numel() >= PARALLEL_MIN_ELEMENTS
        kernel = _backward_threaded if threaded else _backward_serial
        kernel(
            c.numpy(),
            beta3.numpy(),
            beta_abs,
            h0.numpy(),
            h.numpy(),
            gh.contiguous().numpy(),
            _constants(c.dtype, epsilon, rate_grad, sharpness),
            kind,
            dc.numpy(),
            dbeta.numpy(),
            dh0.numpy(),
            chunk,
        )
        if beta3.shape != dbeta.shape:
            dbeta = dbeta.sum_to_size(beta3.shape)
        return dc, dbeta.reshape(ctx.beta_shape), dh0, None, None, None, None


def fused_mru_scan(
    c: Tensor,
    beta: Tensor,
    h0: Tensor,
    epsilon: float,
    surrogate: str,
    sharpness: float,
    beta_abs: bool = False,
) -> tuple[Tensor, Tensor]:
    """The MRU recurrence in one compiled pass; returns (h, mean write rate z̄).

    Args:
        c: candidates (B, T, N), float32 or float64 on CPU.
        beta: thresholds, (B, T, N) or broadcastable from (N,) / (1, 1, N) / (B, 1, N).
        h0: initial state (B, N).
        epsilon: 0 (BMRU) to 1 (CMRU).
        surrogate, sharpness: a name in SURROGATE_CODES and its k.
        beta_abs: use |beta| (and its gradient) instead of beta.

    Both outputs are differentiable: h with respect to c, beta and h0, and the write rate
    through the surrogate of H (for `write_rate_penalty`).
    """
    return _FusedMRUScan.apply(
        c, beta, h0, float(epsilon), bool(beta_abs), SURROGATE_CODES[surrogate], float(sharpness)
    )


__all__ = ["AVAILABLE", "SUPPORTED_DTYPES", "SURROGATE_CODES", "fused_mru_scan", "supports"]
