"""Fused CPU kernels for the MRU recurrence: gates, scan and surrogate gradients in one pass.

The MRU's parallel form is a linear scan whose coefficients come from elementwise gates
(`memrnn.units.mru`, docs/units/mru.md):

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

with σ the surrogate derivative of H (`memrnn.ops.surrogate`), the same chain of terms that
autograd builds through the torch ops. When the kernel is given the raw threshold projection
(`beta_abs=True`) it takes β = |β_raw| itself and returns dL/dβ_raw = sgn(β_raw) dL/dβ.

Work is split over threads by (batch, channel-chunk) jobs as in `memrnn.ops.scan.numba`: each job
owns whole time series, so no two threads write the same element.

`mru_layer` is the unit's whole parallel form with an input threshold (projection [c | β_raw],
recurrence, readout) as one autograd node that walks the flattened (B T) rows in chunks that
stay in cache, as `memrnn.ops.mingru.numba` does for the minGRU. Measured on a 2-core
CPU, BMRU training step at B = 16, T = 1024, D = N = 128 (float32, input without gradient,
freed memory kept as `memrnn.runtime` does), the two paths taking turns in one process, 25
steps each, two runs: median 41.4 and 38.4 ms against 46.3 and 46.1 ms for two projections,
`mru_scan` and the readout as separate torch ops. Seven GEMMs of 0.54 GFLOP take about
24 ms of a step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from memrnn.ops._cpu import (
    NUMBA_AVAILABLE,
    check_kernel_input,
    chunk_size,
    compile_pair,
    empty,
    job_bounds,
    njit,
    prange,
    row_chunks,
    row_job,
    row_jobs,
    row_split,
)

AVAILABLE = NUMBA_AVAILABLE
SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Surrogate names the kernels know, as the integer codes they branch on.
SURROGATE_CODES = {"atan": 0, "fast-sigmoid": 1, "triangle": 2, "straight-through": 3}
# Problems with fewer elements (B T N) than this run single-threaded, as the scan does.
PARALLEL_MIN_ELEMENTS = 1 << 18
# Rows of the flattened (B T) axis per chunk of `mru_layer`: 2048 rows of p = [c | β_raw]
# (2 MiB in float32 at N = 128) stay in cache between the GEMM and the kernel, as in the
# minGRU and LRU layers. Chunks with fewer elements (rows N) run their kernels on one thread.
CHUNK_ROWS = 2048
LAYER_PARALLEL_MIN_ELEMENTS = 1 << 16

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

    @njit(inline="always", error_model="numpy")
    def _update(cv, bv, h_prev, eps, one):  # pragma: no cover - compiled
        """(h_t, z_t) of one neuron from its candidate c_t, threshold β_t >= 0 and h_{t−1}."""
        z = _step(abs(cv) - bv, one)
        return (one - z + eps * z) * h_prev + z * ((one + one) * _step(cv, one) - one), z

    @njit(inline="always", error_model="numpy")
    def _grads(cv, bv, g, h_prev, eps, rate_grad, kind, k, pik, one):  # pragma: no cover
        """(∂L/∂c_t, ∂L/∂β_t, a_t g) of one neuron, g the total gradient reaching h_t (see
        the module notes); a_t g is the carry to h_{t−1}."""
        two = one + one
        u = abs(cv) - bv
        z = _step(u, one)
        dz = g * ((eps - one) * h_prev + two * _step(cv, one) - one) + rate_grad
        du = dz * _slope(kind, k, pik, one, u)
        dc = two * _slope(kind, k, pik, one, cv) * g * z + _sgn(cv, one) * du
        return dc, -du, (one - z + eps * z) * g

    def _forward_loop(c, beta, beta_abs, h0, consts, h, writes, chunk):  # pragma: no cover
        B, T, M = c.shape
        eps, one = consts[0], consts[4]
        step_b = 1 if beta.shape[0] > 1 else 0
        step_t = 1 if beta.shape[1] > 1 else 0
        n_chunks = (M + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib, m0, m1 = job_bounds(job, n_chunks, chunk, M)
            width = m1 - m0
            # Private state and write counter: see memrnn.ops.scan.numba on why not read h back.
            state = h0[ib, m0:m1].copy()
            count = np.zeros(width, dtype=h.dtype)
            for t in range(T):
                c_row = c[ib, t, m0:m1]
                beta_row = beta[ib * step_b, t * step_t, m0:m1]
                h_row = h[ib, t, m0:m1]
                for m in range(width):
                    bv = abs(beta_row[m]) if beta_abs else beta_row[m]
                    value, z = _update(c_row[m], bv, state[m], eps, one)
                    state[m] = value
                    h_row[m] = value
                    count[m] += z
            writes[job] = count.sum()

    def _backward_loop(
        c, beta, beta_abs, h0, h, gh, consts, kind, dc, dbeta, dh0, chunk
    ):  # pragma: no cover - compiled
        B, T, M = c.shape
        eps, rate_grad, k, pik, one = consts[0], consts[1], consts[2], consts[3], consts[4]
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
                    braw = beta_row[m]
                    bv = abs(braw) if beta_abs else braw
                    g = gh_row[m] + carry[m]
                    dcv, dbv, carry[m] = _grads(
                        c_row[m], bv, g, h_prev[m], eps, rate_grad, kind, k, pik, one
                    )
                    dc_row[m] = dcv
                    dbeta_row[m] = dbv * _sgn(braw, one) if beta_abs else dbv
            dh0[ib, m0:m1] = carry

    def _layer_forward_loop(p, r0, T, state, consts, h, writes, width):  # pragma: no cover
        """h (rows, N) for the rows r0 … r0 + len(p) − 1 of the flattened (B T) axis from the
        chunk p = [c | β_raw] (rows, 2N); `state` (B, N) holds each batch row's h before the
        chunk, and after it; writes[job] counts the job's writes. Jobs as in `row_job`."""
        R, N2 = p.shape
        N = N2 // 2
        eps, one = consts[0], consts[4]
        n_ch, n_jobs = row_jobs(r0, R, T, N, width)
        for job in prange(n_jobs):
            b, lo, hi, m0, m1 = row_job(job, n_ch, width, N, r0, R, T)
            s = state[b, m0:m1].copy()  # a private buffer, indexed from 0, vectorises
            count = np.zeros(m1 - m0, dtype=h.dtype)
            for loc in range(lo, hi):
                c_row = p[loc, m0:m1]
                beta_row = p[loc, N + m0 : N + m1]
                out = h[loc, m0:m1]
                for i in range(m1 - m0):
                    value, z = _update(c_row[i], abs(beta_row[i]), s[i], eps, one)
                    s[i] = value
                    out[i] = value
                    count[i] += z
            state[b, m0:m1] = s
            writes[job] = count.sum()

    def _layer_backward_loop(
        gh, r0, T, p, h, h0, carry, consts, kind, dp, width
    ):  # pragma: no cover - compiled
        """∂L/∂p (rows, 2N) into dp for the rows r0 … r0 + len(gh) − 1 from the chunk
        gh = ∂L/∂h (rows, N), its p = [c | β_raw] and all of h (B T, N); `carry` (B, N) holds
        each batch row's gradient carry after the chunk, and before it."""
        R, N = gh.shape
        eps, rate_grad, k, pik, one = consts[0], consts[1], consts[2], consts[3], consts[4]
        n_ch, n_jobs = row_jobs(r0, R, T, N, width)
        for job in prange(n_jobs):
            b, lo, hi, m0, m1 = row_job(job, n_ch, width, N, r0, R, T)
            cr = carry[b, m0:m1].copy()
            for loc in range(hi - 1, lo - 1, -1):
                row = r0 + loc
                prev = h[row - 1, m0:m1] if row % T > 0 else h0[b, m0:m1]
                c_row = p[loc, m0:m1]
                beta_row = p[loc, N + m0 : N + m1]
                g_in = gh[loc, m0:m1]
                dc = dp[loc, m0:m1]
                dbeta = dp[loc, N + m0 : N + m1]
                for i in range(m1 - m0):
                    braw = beta_row[i]
                    g = g_in[i] + cr[i]
                    dc[i], dbv, cr[i] = _grads(
                        c_row[i], abs(braw), g, prev[i], eps, rate_grad, kind, k, pik, one
                    )
                    dbeta[i] = dbv * _sgn(braw, one)
            carry[b, m0:m1] = cr

    # Threaded for large problems, single-threaded for small ones (see memrnn.ops.scan.numba).
    # error_model="numpy": no zero-division checks, which kept the loops from vectorising
    # (backward kernel at B = 16, T = 1024, N = 128: 44 ms with them, 5 ms without).
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")
    # (threaded, serial) pairs, indexed 0 / 1.
    _layer_forward = compile_pair(_layer_forward_loop, error_model="numpy")
    _layer_backward = compile_pair(_layer_backward_loop, error_model="numpy")


def _check(c: Tensor, surrogate: object) -> None:
    check_kernel_input(c, "the numba MRU kernel", SUPPORTED_DTYPES, AVAILABLE)
    if not isinstance(surrogate, str) or surrogate not in SURROGATE_CODES:
        raise RuntimeError(
            f"the numba MRU kernel needs a named surrogate {tuple(SURROGATE_CODES)}, "
            f"got {surrogate!r}"
        )


def _constants(dtype: torch.dtype, epsilon: float, rate_grad: float, k: float) -> np.ndarray:
    """The kernels' `consts` in the problem's dtype: [epsilon, rate gradient, k, pi k, 1]."""
    values = [epsilon, rate_grad, k, math.pi * k, 1.0]
    return np.array(values, dtype=np.float32 if dtype == torch.float32 else np.float64)


def _jobs(batch: int, channels: int) -> tuple[int, int]:
    chunk = chunk_size(batch, channels)
    return chunk, batch * ((channels + chunk - 1) // chunk)


class _FusedMRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, beta, h0, epsilon, beta_abs, kind, sharpness):
        c, h0 = c.contiguous(), h0.contiguous()
        beta3 = beta.reshape((1,) * (3 - beta.dim()) + tuple(beta.shape)).contiguous()
        B, T, N = c.shape
        chunk, n_jobs = _jobs(B, N)
        h = empty((B, T, N), c.dtype)
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
        dc = empty((B, T, N), c.dtype)
        dbeta = empty((B, T, N), c.dtype)
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


def mru_scan(
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
    _check(c, surrogate)
    return _FusedMRUScan.apply(
        c, beta, h0, float(epsilon), bool(beta_abs), SURROGATE_CODES[surrogate], float(sharpness)
    )


class _MRULayer(torch.autograd.Function):
    """The MRU layer over a sequence as one autograd node (see `mru_layer`)."""

    @staticmethod
    def forward(ctx, x, w_in, b_in, h0, w_out, b_out, epsilon, kind, sharpness, keep):
        B, T, D = x.shape
        N, O = h0.shape[1], w_out.shape[0]
        x2 = x.contiguous().view(B * T, D)
        rows = min(CHUNK_ROWS, B * T)
        # p and h are kept for the backward pass only when one can come (`keep`: grad mode
        # was on at the call; inside forward it is always off), else one chunk of each.
        save = keep and any(ctx.needs_input_grad)
        p = empty((B * T, 2 * N), x.dtype) if save else torch.empty(rows, 2 * N, dtype=x.dtype)
        h = empty((B * T, N), x.dtype) if save else torch.empty(rows, N, dtype=x.dtype)
        y = empty((B, T, O), x.dtype)
        y2 = y.view(B * T, O)
        state = h0.detach().clone(memory_format=torch.contiguous_format)
        state_a, consts = state.numpy(), _constants(x.dtype, epsilon, 0.0, sharpness)
        writes = 0.0
        for r0, r1 in row_chunks(B * T, CHUNK_ROWS):
            p_c = p[r0:r1] if save else p[: r1 - r0]
            h_c = h[r0:r1] if save else h[: r1 - r0]
            _affine(x2[r0:r1], w_in, b_in, p_c)
            threaded, width = row_split(r1 - r0, r0, T, N, LAYER_PARALLEL_MIN_ELEMENTS)
            counts = np.zeros(B * N, dtype=np.float64)
            _layer_forward[0 if threaded else 1](
                p_c.numpy(), r0, T, state_a, consts, h_c.numpy(), counts, width
            )
            writes += counts.sum()
            _affine(h_c, w_out, b_out, y2[r0:r1])
        if save:
            ctx.save_for_backward(x2, w_in, h0, w_out, p, h)
            ctx.options = (B, T, epsilon, kind, sharpness)
        rate = torch.tensor(writes / (B * T * N), dtype=x.dtype)
        return y, state, rate

    @staticmethod
    def backward(ctx, gy, g_last, g_rate):
        x2, w_in, h0, w_out, p, h = ctx.saved_tensors
        B, T, epsilon, kind, sharpness = ctx.options
        N, O, dtype = h0.shape[1], w_out.shape[0], x2.dtype
        need_x, need_w_in, need_b_in, _, need_w_out, need_b_out = ctx.needs_input_grad[:6]
        gy2 = (torch.zeros(B * T, O, dtype=dtype) if gy is None else gy.contiguous()).view(-1, O)
        carry = torch.zeros_like(h0) if g_last is None else g_last.to(dtype)
        carry = carry.clone(memory_format=torch.contiguous_format)
        rate_grad = 0.0 if g_rate is None else float(g_rate) / (B * T * N)
        consts = _constants(dtype, epsilon, rate_grad, sharpness)
        rows = min(CHUNK_ROWS, B * T)
        gh, dp = torch.empty(rows, N, dtype=dtype), torch.empty(rows, 2 * N, dtype=dtype)
        dw_in = torch.zeros_like(w_in) if need_w_in else None
        dw_out = torch.zeros_like(w_out) if need_w_out else None
        # Bias gradients: sums over B T rows, per chunk in the dtype, added up in float64.
        db_in = torch.zeros(2 * N, dtype=torch.float64) if need_b_in else None
        db_out = torch.zeros(O, dtype=torch.float64) if need_b_out else None
        dx = empty((B * T, x2.shape[1]), dtype) if need_x else None
        h_a, h0_a, carry_a = h.numpy(), h0.detach().contiguous().numpy(), carry.numpy()
        for r0, r1 in reversed(row_chunks(B * T, CHUNK_ROWS)):
            gh_c, dp_c, gy_c = gh[: r1 - r0], dp[: r1 - r0], gy2[r0:r1]
            torch.mm(gy_c, w_out, out=gh_c)
            if dw_out is not None:
                dw_out.addmm_(gy_c.T, h[r0:r1])
            if db_out is not None:
                db_out += gy_c.sum(dim=0)
            threaded, width = row_split(r1 - r0, r0, T, N, LAYER_PARALLEL_MIN_ELEMENTS)
            _layer_backward[0 if threaded else 1](
                gh_c.numpy(),
                r0,
                T,
                p[r0:r1].numpy(),
                h_a,
                h0_a,
                carry_a,
                consts,
                kind,
                dp_c.numpy(),
                width,
            )
            if dw_in is not None:
                dw_in.addmm_(dp_c.T, x2[r0:r1])
            if db_in is not None:
                db_in += dp_c.sum(dim=0)
            if dx is not None:
                torch.mm(dp_c, w_in, out=dx[r0:r1])
        return (
            None if dx is None else dx.view(B, T, -1),
            dw_in,
            None if db_in is None else db_in.to(dtype),
            carry,
            dw_out,
            None if db_out is None else db_out.to(dtype),
            None,
            None,
            None,
            None,
        )


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> None:
    """out = x weightᵀ (+ bias), written in place."""
    if bias is None:
        torch.mm(x, weight.T, out=out)
    else:
        torch.addmm(bias, x, weight.T, out=out)


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
    keep: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The MRU layer with an input-dependent threshold in compiled kernels; (y, h_T, z̄).

    [c | β_raw] = x w_inᵀ + b_in with w_in (2N, D) (rows [0, N) the candidate's, [N, 2N) the
    threshold's, β = |β_raw|), the MRU recurrence from h0 (B, N), y = h w_outᵀ + b_out with
    w_out (O, N); z̄ is the mean write rate. Differentiable in every tensor argument.

    Walks the flattened (B T) rows in chunks of `CHUNK_ROWS`, as the minGRU and LRU layers
    do: per chunk one GEMM writes p = [c | β_raw], a kernel runs the recurrence reading p back
    from the cache, and one GEMM the readout; backward, per chunk in reverse, ∂L/∂h = ∂L/∂y
    w_out, the kernel writes ∂L/∂p (the equations of `mru_scan`), and GEMMs turn it into
    ∂L/∂w_in and ∂L/∂x while it is in cache. All tensors share x's dtype. `keep` (default:
    grad mode at the call) keeps what a backward pass needs.
    """
    _check(x, surrogate)
    keep = torch.is_grad_enabled() if keep is None else keep
    return _MRULayer.apply(
        x,
        w_in,
        b_in,
        h0,
        w_out,
        b_out,
        float(epsilon),
        SURROGATE_CODES[surrogate],
        float(sharpness),
        keep,
    )


__all__ = [
    "AVAILABLE",
    "CHUNK_ROWS",
    "SUPPORTED_DTYPES",
    "SURROGATE_CODES",
    "mru_layer",
    "mru_scan",
]
