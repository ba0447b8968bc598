"""The LRU layer in real arithmetic: compiled CPU kernels (numba).

The LRU state is complex, but complex matmuls and elementwise ops on CPU are slow and each
costs a full pass over (B, T, N) complex tensors. Here the complex numbers are kept as real
pairs in a split layout, [real parts | imaginary parts] along the last axis, so that both
projections around the recurrence are single real GEMMs:

    p = u W_inᵀ,    W_in = [B_re; B_im]  (2N, H)      p = [Re(B u) | Im(B u)]   (B, T, 2N)
    h_t = λ h_{t−1} + γ p_t                            h = [Re h | Im h]         (B, T, 2N)
    y = h W_outᵀ + D ⊙ u,   W_out = [C_re, −C_im]  (H, 2N)   y = Re(C h) + D ⊙ u (B, T, H)

The recurrence (scaling by γ, the complex products with the constant λ, the state carried in
registers) is a compiled kernel, and the whole layer is one autograd node. It walks the
flattened (B T) rows in chunks of `CHUNK_ROWS`: per chunk one GEMM, the kernel, one GEMM, so
that p (and in the backward pass ∂L/∂h and g) never leave the cache; the state and the
gradient carry persist between chunks in (B, 2N) buffers. Only u, h and the parameters are
saved for the backward pass.

Backward, walking t = T−1 … 0 with c the gradient reaching h_t from later steps (initially that
of the final state), in PyTorch's convention for complex gradients (dL/dRe + i dL/dIm):

    g_t = (gy W_out)_t + c,   c ← conj(λ) g_t,   dL/dλ = Σ_{B,T} g_t conj(h_{t−1}),   dL/dh_0 = c

With G = gᵀ u (2N, H) and Γ = diag(γ, γ) (2N, 2N), since dL/dp_t = γ g_t and p = u W_inᵀ:

    dL/dW_in = Γ G,   dL/dW_out = gyᵀ h,   dL/dD = Σ_{B,T} gy ⊙ u,   dL/du = gy ⊙ D + g Γ W_in
    dL/dγ_n = Σ_{B,T} Re(conj(p_t,n) g_t,n) = Σ_h (W_in ⊙ G)[n, h] + (W_in ⊙ G)[N + n, h]

so p is never stored. Sums over time in the kernels are taken in blocks of rows in the tensors'
dtype and added up in float64. λ enters as the pair (Re λ, Im λ) and γ as a value, so that
autograd carries the chain rule on to ν, θ and log γ.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memrnn.ops._cpu import (
    NUMBA_AVAILABLE,
    cached_njit,
    check_kernel_input,
    empty,
    row_chunks,
)

AVAILABLE = NUMBA_AVAILABLE
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# Rows of the flattened (B T) axis per chunk: 2048 rows of p and h (2 MiB each in float32 at
# N = 128) stay in cache between the GEMMs and the kernel. Measured on the 2-core machine,
# B=16, T=1024, N=H=128, training step: 40-42 ms with 1024 or 2048 rows, 43-46 ms unchunked;
# under load from other processes 2048 rows did best (59 ms; 62, 67, 71 ms with 1024, 512,
# 256 rows), as every GEMM call is a parallel region that waits for its slowest thread. The
# kernels themselves are single-threaded: a chunk takes them 0.1-0.2 ms.
CHUNK_ROWS = 2048
# Rows summed in the tensors' dtype before a partial sum is added into a float64 total.
_BLOCK = 128

if AVAILABLE:

    @cached_njit(nogil=True)
    def _forward_rows(p, r0, T, lam, gamma, state, h):  # pragma: no cover - compiled
        """h (rows, 2N) for the rows r0 … r0 + len(p) − 1 of the flattened (B T) axis, from the
        chunk p (rows, 2N); `state` (B, 2N) holds each batch row's h before the chunk, and
        after it."""
        R, N2 = p.shape
        N = N2 // 2
        lr = lam[0].copy()
        li = lam[1].copy()
        gm = gamma.copy()
        r = 0
        while r < R:
            # One segment: the rows of batch row b within the chunk.
            row = r0 + r
            b = row // T
            n = min(R - r, T - row % T)
            # Private state buffers and row views indexed from 0 let LLVM vectorise the loop.
            sr = state[b, :N].copy()
            si = state[b, N:].copy()
            for j in range(n):
                pr = p[r + j, :N]
                pi = p[r + j, N:]
                hr = h[r + j, :N]
                hi = h[r + j, N:]
                for k in range(N):
                    a = lr[k] * sr[k] - li[k] * si[k] + gm[k] * pr[k]
                    c = lr[k] * si[k] + li[k] * sr[k] + gm[k] * pi[k]
                    sr[k] = a
                    si[k] = c
                    hr[k] = a
                    hi[k] = c
            state[b, :N] = sr
            state[b, N:] = si
            r += n

    @cached_njit(nogil=True)
    def _backward_rows(gh, r0, T, lam, h, h0, carry, g, dlam):  # pragma: no cover - compiled
        """g = ∂L/∂h_t + c for the rows r0 … r0 + len(gh) − 1, walking them downwards, from
        the chunk gh = gy W_out (rows, 2N); `carry` (B, 2N) holds each batch row's c after
        the chunk, and before it; dL/dλ is added into dlam (B, 2N), float64."""
        R, N2 = gh.shape
        N = N2 // 2
        lr = lam[0].copy()
        li = lam[1].copy()
        part_r = np.zeros(N, dtype=gh.dtype)
        part_i = np.zeros(N, dtype=gh.dtype)
        r = R
        while r > 0:
            last = r0 + r - 1
            b = last // T
            n = min(r, last % T + 1)
            cr = carry[b, :N].copy()
            ci = carry[b, N:].copy()
            for j in range(n - 1, -1, -1):
                loc = r - n + j
                row = r0 + loc
                if row % T > 0:
                    qr = h[row - 1, :N]
                    qi = h[row - 1, N:]
                else:
                    qr = h0[b, :N]
                    qi = h0[b, N:]
                ghr = gh[loc, :N]
                ghi = gh[loc, N:]
                g_r = g[loc, :N]
                g_i = g[loc, N:]
                for k in range(N):
                    gr = ghr[k] + cr[k]
                    gi = ghi[k] + ci[k]
                    g_r[k] = gr
                    g_i[k] = gi
                    part_r[k] += gr * qr[k] + gi * qi[k]
                    part_i[k] += gi * qr[k] - gr * qi[k]
                    cr[k] = lr[k] * gr + li[k] * gi
                    ci[k] = lr[k] * gi - li[k] * gr
                if j % _BLOCK == 0:
                    for k in range(N):
                        dlam[b, k] += part_r[k]
                        dlam[b, N + k] += part_i[k]
                        part_r[k] = 0.0
                        part_i[k] = 0.0
            carry[b, :N] = cr
            carry[b, N:] = ci
            r -= n

    @cached_njit(nogil=True)
    def _column_dots(a, b, out):  # pragma: no cover - compiled
        """out = Σ_rows a ⊙ b for a, b (rows, H), out (H,) float64."""
        R, H = a.shape
        part = np.zeros(H, dtype=a.dtype)
        for r in range(R):
            a_row = a[r]
            b_row = b[r]
            for k in range(H):
                part[k] += a_row[k] * b_row[k]
            if r % _BLOCK == _BLOCK - 1 or r == R - 1:
                for k in range(H):
                    out[k] += part[k]
                    part[k] = 0.0


def _check(t: Tensor) -> None:
    check_kernel_input(t, "the numba LRU kernel", SUPPORTED_DTYPES, AVAILABLE)


def _arr(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _LRULayer(torch.autograd.Function):
    """The LRU layer over a sequence as one autograd node (see the module notes)."""

    @staticmethod
    def forward(ctx, u, w_in, lam, gamma, h0, w_out, d, keep):  # type: ignore[override]
        B, T, H = u.shape
        N2 = w_in.shape[0]
        u = u.contiguous()
        u2 = u.view(B * T, H)
        rows = min(CHUNK_ROWS, B * T)
        # h is kept for the backward pass only when one can come (`keep`: grad mode was on at
        # the call; inside forward it is always off), else one chunk of it.
        save = keep and any(ctx.needs_input_grad)
        h = empty((B, T, N2), u.dtype) if save else torch.empty(1, rows, N2, dtype=u.dtype)
        y = empty((B, T, H), u.dtype)
        h2, y2 = h.view(-1, N2), y.view(B * T, H)
        state = h0.detach().clone(memory_format=torch.contiguous_format)
        p = torch.empty(rows, N2, dtype=u.dtype)
        lam_a, gamma_a, state_a = _arr(lam), _arr(gamma), state.numpy()
        for r0, r1 in row_chunks(B * T, CHUNK_ROWS):
            p_c = p[: r1 - r0]
            h_c = h2[r0:r1] if save else h2[: r1 - r0]
            torch.mm(u2[r0:r1], w_in.T, out=p_c)
            _forward_rows(p_c.numpy(), r0, T, lam_a, gamma_a, state_a, h_c.numpy())
            torch.mul(u2[r0:r1], d, out=y2[r0:r1])
            y2[r0:r1].addmm_(h_c, w_out.T)
        if save:
            ctx.save_for_backward(u, w_in, lam, gamma, h0, w_out, d, h)
        return y, state

    @staticmethod
    def backward(ctx, gy, gh_last):  # type: ignore[override]
        u, w_in, lam, gamma, h0, w_out, d, h = ctx.saved_tensors
        B, T, H = u.shape
        N2 = w_in.shape[0]
        N = N2 // 2
        dtype = u.dtype
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        carry = torch.zeros_like(h0) if gh_last is None else gh_last.clone()
        carry = carry.contiguous()
        gy2, u2, h2 = gy.view(B * T, H), u.view(B * T, H), h.view(B * T, N2)
        rows = min(CHUNK_ROWS, B * T)
        gh, g = torch.empty(rows, N2, dtype=dtype), torch.empty(rows, N2, dtype=dtype)
        dlam = torch.zeros(B, N2, dtype=torch.float64)
        g_u = torch.zeros(N2, H, dtype=dtype)  # G = gᵀ u
        dw_out = torch.zeros(H, N2, dtype=dtype)
        scale = gamma.repeat(2).unsqueeze(1)  # (2N, 1): Γ
        du = empty((B, T, H), dtype) if ctx.needs_input_grad[0] else None
        w_in_scaled = scale * w_in if du is not None else None
        lam_a, h_a, h0_a, carry_a, dlam_a = (
            _arr(lam),
            h2.numpy(),
            _arr(h0),
            carry.numpy(),
            dlam.numpy(),
        )
        for r0, r1 in reversed(row_chunks(B * T, CHUNK_ROWS)):
            gh_c, g_c = gh[: r1 - r0], g[: r1 - r0]
            torch.mm(gy2[r0:r1], w_out, out=gh_c)
            # Before the kernel, so that it finds these rows of h in cache.
            dw_out.addmm_(gy2[r0:r1].T, h2[r0:r1])
            _backward_rows(gh_c.numpy(), r0, T, lam_a, h_a, h0_a, carry_a, g_c.numpy(), dlam_a)
            g_u.addmm_(g_c.T, u2[r0:r1])
            if du is not None:
                du2 = du.view(B * T, H)[r0:r1]
                torch.mul(gy2[r0:r1], d, out=du2)
                du2.addmm_(g_c, w_in_scaled)
        dgamma = (w_in * g_u).sum(dim=1)
        dd = torch.zeros(H, dtype=torch.float64)
        _column_dots(gy2.numpy(), u2.numpy(), dd.numpy())
        return (
            du,
            scale * g_u,
            dlam.sum(dim=0).reshape(2, N).to(dtype),
            dgamma[:N] + dgamma[N:],
            carry,
            dw_out,
            dd.to(dtype),
            None,
        )


def lru_layer(
    u: Tensor, w_in: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, w_out: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """`memrnn.ops.lru.lru_layer` in the compiled kernels (CPU, float32/float64; raises
    RuntimeError otherwise)."""
    _check(u)
    return _LRULayer.apply(u, w_in, lam, gamma, h0, w_out, d, torch.is_grad_enabled())


__all__ = ["AVAILABLE", "CHUNK_ROWS", "SUPPORTED_DTYPES", "lru_layer"]
