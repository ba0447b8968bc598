"""The minGRU layer (input projection + recurrence) as one autograd node on CPU (numba).

The minGRU projects x once to p = [z_pre, h̃] = x Wᵀ + b of width 2H (docs/units/mingru.md) and
runs h_t = (1 − z_t) h_{t−1} + z_t h̃_t with z = σ(z_pre). From torch ops that is a GEMM
and then a dozen passes over (B, T, H) tensors: split, σ, 1 − z, z h̃, the scan, and in the
backward pass the gradients of each, concatenated again. Here the flattened (B T) rows are
walked in chunks of `CHUNK_ROWS`, as in the LRU layer (`memrnn.ops.lru.numba`): per chunk one
GEMM writes p, σ is applied to its first half in place, and one compiled kernel runs the
recurrence, so p is read back from the cache. The state persists between chunks in a (B, H)
buffer. p (with z in place of z_pre) and h are kept for the backward pass, which walks the
chunks in reverse:

    g_t = ∂L/∂h_t + c,   c ← (1 − z_t) g_t,   ∂L/∂h_0 = c after the first step
    ∂L/∂z_pre_t = g_t (h̃_t − h_{t−1}) z_t (1 − z_t),   ∂L/∂h̃_t = g_t z_t

writing ∂L/∂p for one chunk, which two GEMMs turn into ∂L/∂x (= ∂L/∂p W) and ∂L/∂W
(+= ∂L/∂pᵀ x) while it is in cache; ∂L/∂b is summed per chunk and added up in float64.

Measured on a 2-core CPU, side by side in one process (B = 16, T = 1024, D = H = 128,
float32, training step of a sum-of-squares loss, input without gradient): 21.3 ms median,
against 26.3 ms for a torch GEMM followed by one fused scan kernel; the two GEMMs (p, ∂L/∂W)
take 13.3 ms of it, the kernels 3.5 ms. The kernels share a chunk's batch row segments, or
slices of channels where segments are fewer than threads, among numba's threads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memrnn.ops._cpu import (
    NUMBA_AVAILABLE,
    check_kernel_input,
    compile_pair,
    empty,
    prange,
    row_chunks,
    row_job,
    row_jobs,
    row_split,
)

AVAILABLE = NUMBA_AVAILABLE
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# Rows of the flattened (B T) axis per chunk: 2048 rows of p (2 MiB in float32 at H = 128)
# stay in cache between the GEMM, σ and the kernel (the same choice as the LRU layer's).
CHUNK_ROWS = 2048
# Chunks with fewer elements (rows H) than this run their kernels single-threaded.
PARALLEL_MIN_ELEMENTS = 1 << 16

if AVAILABLE:

    def _forward_loop(p, r0, T, state, h, width):  # pragma: no cover - compiled
        """h (rows, H) for the rows r0 … r0 + len(p) − 1 of the flattened (B T) axis from the
        chunk p = [z | h̃] (rows, 2H); `state` (B, H) holds each batch row's h before the
        chunk, and after it. Jobs: (batch row segment, slice of `width` channels)."""
        R, H2 = p.shape
        H = H2 // 2
        n_ch, n_jobs = row_jobs(r0, R, T, H, width)
        for job in prange(n_jobs):
            b, lo, hi, m0, m1 = row_job(job, n_ch, width, H, r0, R, T)
            s = state[b, m0:m1].copy()  # a private buffer, indexed from 0, vectorises
            for loc in range(lo, hi):
                z = p[loc, m0:m1]
                cand = p[loc, H + m0 : H + m1]
                out = h[loc, m0:m1]
                for k in range(m1 - m0):
                    value = s[k] + z[k] * (cand[k] - s[k])
                    s[k] = value
                    out[k] = value
            state[b, m0:m1] = s

    def _backward_loop(gh, r0, T, p, h, h0, carry, dp, width):  # pragma: no cover - compiled
        """∂L/∂p (rows, 2H) into dp for the rows r0 … r0 + len(gh) − 1, from the chunk
        gh = ∂L/∂h (rows, H), its p = [z | h̃] (rows, 2H) and all of h (B T, H); `carry`
        (B, H) holds each batch row's gradient carry after the chunk, and before it."""
        R, H = gh.shape
        n_ch, n_jobs = row_jobs(r0, R, T, H, width)
        # Pass 1, walking the rows downwards: g_t into the h̃ half of dp, and the carry. Two
        # loops vectorise where one doing all the work did not (2.5x slower, measured).
        for job in prange(n_jobs):
            b, lo, hi, m0, m1 = row_job(job, n_ch, width, H, r0, R, T)
            c = carry[b, m0:m1].copy()
            for loc in range(hi - 1, lo - 1, -1):
                z = p[loc, m0:m1]
                g_in = gh[loc, m0:m1]
                g = dp[loc, H + m0 : H + m1]
                for k in range(m1 - m0):
                    value = g_in[k] + c[k]
                    g[k] = value
                    c[k] = value - value * z[k]
            carry[b, m0:m1] = c
        # Pass 2, row by row: ∂L/∂z_pre = g (1 − z) z (h̃ − h_prev), ∂L/∂h̃ = g z.
        for loc in prange(R):
            row = r0 + loc
            prev = h[row - 1] if row % T > 0 else h0[row // T]
            z = p[loc, :H]
            cand = p[loc, H:]
            dz = dp[loc, :H]
            g = dp[loc, H:]
            for k in range(H):
                gz = g[k] * z[k]
                dz[k] = (g[k] - gz) * z[k] * (cand[k] - prev[k])
                g[k] = gz

    # error_model="numpy": no zero-division checks in the loops (see memrnn.ops.mru.numba).
    _forward_threaded, _forward_serial = compile_pair(_forward_loop, error_model="numpy")
    _backward_threaded, _backward_serial = compile_pair(_backward_loop, error_model="numpy")


def _check(t: Tensor) -> None:
    check_kernel_input(t, "the numba minGRU kernel", SUPPORTED_DTYPES, AVAILABLE)


class _MinGRULayer(torch.autograd.Function):
    """The minGRU layer over a sequence as one autograd node (see the module notes)."""

    @staticmethod
    def forward(ctx, x, weight, bias, h0, keep):  # type: ignore[override]
        B, T, D = x.shape
        H2 = weight.shape[0]
        H = H2 // 2
        x = x.contiguous()
        x2 = x.view(B * T, D)
        rows = min(CHUNK_ROWS, B * T)
        # p is kept for the backward pass only when one can come (`keep`: grad mode was on
        # at the call; inside forward it is always off), else one chunk of it.
        save = keep and any(ctx.needs_input_grad)
        p = empty((B * T, H2), x.dtype) if save else torch.empty(rows, H2, dtype=x.dtype)
        h = empty((B, T, H), x.dtype)
        h2 = h.view(B * T, H)
        state = h0.detach().clone(memory_format=torch.contiguous_format)
        state_a = state.numpy()
        for r0, r1 in row_chunks(B * T, CHUNK_ROWS):
            p_c = p[r0:r1] if save else p[: r1 - r0]
            if bias is None:
                torch.mm(x2[r0:r1], weight.T, out=p_c)
            else:
                torch.addmm(bias, x2[r0:r1], weight.T, out=p_c)
            p_c[:, :H].sigmoid_()
            threaded, width = row_split(r1 - r0, r0, T, H, PARALLEL_MIN_ELEMENTS)
            kernel = _forward_threaded if threaded else _forward_serial
            kernel(p_c.numpy(), r0, T, state_a, h2[r0:r1].numpy(), width)
        if save:
            ctx.save_for_backward(x, weight, h0, p, h)
        return h

    @staticmethod
    def backward(ctx, gh):  # type: ignore[override]
        x, weight, h0, p, h = ctx.saved_tensors
        B, T, D = x.shape
        H2 = weight.shape[0]
        dtype = x.dtype
        gh2 = gh.contiguous().view(B * T, H2 // 2)
        x2, h2 = x.view(B * T, D), h.view(B * T, H2 // 2)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        carry = torch.zeros_like(h0, memory_format=torch.contiguous_format)
        dp = torch.empty(min(CHUNK_ROWS, B * T), H2, dtype=dtype)
        db = torch.zeros(H2, dtype=torch.float64) if need_b else None
        dw = torch.zeros(H2, D, dtype=dtype) if need_w else None
        dx = empty((B, T, D), dtype) if need_x else None
        # h is this node's own output: detached to be read as an array.
        h_a, h0_a, carry_a = h2.detach().numpy(), h0.detach().contiguous().numpy(), carry.numpy()
        gh_a, p_a = gh2.numpy(), p.numpy()
        for r0, r1 in reversed(row_chunks(B * T, CHUNK_ROWS)):
            dp_c = dp[: r1 - r0]
            threaded, width = row_split(r1 - r0, r0, T, H2 // 2, PARALLEL_MIN_ELEMENTS)
            kernel = _backward_threaded if threaded else _backward_serial
            kernel(gh_a[r0:r1], r0, T, p_a[r0:r1], h_a, h0_a, carry_a, dp_c.numpy(), width)
            if need_b:
                db += dp_c.sum(dim=0)
            if dx is not None:
                torch.mm(dp_c, weight, out=dx.view(B * T, D)[r0:r1])
            if dw is not None:
                dw.addmm_(dp_c.T, x2[r0:r1])
        dbias = db.to(dtype) if need_b else None
        return dx, dw, dbias, carry, None


def mingru_layer(x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor) -> Tensor:
    """`memrnn.ops.mingru.mingru_layer` in the compiled kernels (CPU, float32/float64; raises
    RuntimeError otherwise)."""
    _check(x)
    return _MinGRULayer.apply(x, weight, bias, h0, torch.is_grad_enabled())


__all__ = ["AVAILABLE", "CHUNK_ROWS", "SUPPORTED_DTYPES", "mingru_layer"]
