"""The LRU layer in real arithmetic: compiled CPU kernels (numba) and a torch fallback.

The LRU state is complex, but complex matmuls and elementwise ops on CPU are slow and each
costs a full pass over (B, T, N) complex tensors. Here the complex numbers are kept as real
pairs in a split layout, [real parts | imaginary parts] along the last axis, so that both
projections around the recurrence are single real GEMMs:

    p = u W_inᵀ,    W_in = [B_re; B_im]  (2N, H)      p = [Re(B u) | Im(B u)]   (B, T, 2N)
    h_t = λ h_{t−1} + γ p_t                            h = [Re h | Im h]         (B, T, 2N)
    y = h W_outᵀ + D ⊙ u,   W_out = [C_re, −C_im]  (H, 2N)   y = Re(C h) + D ⊙ u (B, T, H)

The recurrence (scaling by γ, the complex products with the constant λ, the state carried in
registers) is one kernel reading p once and writing h once, and the whole layer is one
autograd node whose GEMMs write into preallocated buffers.

Backward, walking t = T−1 … 0 with c the gradient reaching h_t from later steps (initially that
of the final state), in PyTorch's convention for complex gradients (dL/dRe + i dL/dIm):

    ∂L/∂h = gy W_out,   g_t = ∂L/∂h_t + c,   c ← conj(λ) g_t,   dL/dp_t = γ g_t
    dL/dγ = Σ_{B,T} Re(conj(p_t) g_t),   dL/dλ = Σ_{B,T} g_t conj(h_{t−1}),   dL/dh_0 = c
    dL/dW_out = gyᵀ h,   dL/dW_in = (dL/dp)ᵀ u,   dL/dD = Σ_{B,T} gy ⊙ u
    dL/du = gy ⊙ D + (dL/dp) W_in

The sums over time are accumulated per batch row in float64 and reduced over the batch
afterwards. λ enters as the pair (Re λ, Im λ) and γ as a value, so that autograd carries the
chain rule on to ν, θ and log γ.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memrnn.scan import linear_scan
from memrnn.scan.native import _chunk_size, _empty

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatching
    numba = None

AVAILABLE = numba is not None
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# Problems with fewer complex elements (B T N) than this run single-threaded.
PARALLEL_MIN_ELEMENTS = 1 << 18
# Rows of time prefetched at once by the backward kernel.
_BLOCK = 128

if AVAILABLE:

    def _forward_loop(p, lam, gamma, h0, h, h_last, chunk):  # pragma: no cover - compiled
        B, T, N2 = p.shape
        N = N2 // 2
        n_chunks = (N + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib = job // n_chunks
            m0 = (job % n_chunks) * chunk
            m1 = min(m0 + chunk, N)
            L = m1 - m0
            # Row views indexed from 0 keep numba's negative-index handling out of the inner
            # loop, and the private state buffers let LLVM vectorise it.
            lr = lam[0, m0:m1].copy()
            li = lam[1, m0:m1].copy()
            gm = gamma[m0:m1].copy()
            sr = h0[ib, m0:m1].copy()
            si = h0[ib, N + m0 : N + m1].copy()
            for t in range(T):
                pr = p[ib, t, m0:m1]
                pi = p[ib, t, N + m0 : N + m1]
                hr = h[ib, t, m0:m1]
                hi = h[ib, t, N + m0 : N + m1]
                for k in range(L):
                    a = lr[k] * sr[k] - li[k] * si[k] + gm[k] * pr[k]
                    b = lr[k] * si[k] + li[k] * sr[k] + gm[k] * pi[k]
                    sr[k] = a
                    si[k] = b
                    hr[k] = a
                    hi[k] = b
            h_last[ib, m0:m1] = sr
            h_last[ib, N + m0 : N + m1] = si

    @njit(cache=True, nogil=True)
    def _prefetch(x, ib, t_lo, t_hi, m0, m1):  # pragma: no cover - compiled
        """Reads rows t_lo..t_hi-1 of both halves of x[ib, :, :] over channels m0:m1 in
        ascending order, one load per cache line."""
        N = x.shape[2] // 2
        total = 0.0
        for t in range(t_lo, t_hi):
            # One loop per half: reading both halves in one loop ran 30% slower.
            re = x[ib, t, m0:m1]
            for k in range(0, m1 - m0, 8):
                total += abs(re[k])
            im = x[ib, t, N + m0 : N + m1]
            for k in range(0, m1 - m0, 8):
                total += abs(im[k])
        return total

    def _backward_loop(
        p, h, h0, lam, gamma, gh, gh_last, gp, dgamma, dlam, dh0, chunk
    ):  # pragma: no cover - compiled
        B, T, N2 = p.shape
        N = N2 // 2
        n_chunks = (N + chunk - 1) // chunk
        for job in prange(B * n_chunks):
            ib = job // n_chunks
            m0 = (job % n_chunks) * chunk
            m1 = min(m0 + chunk, N)
            L = m1 - m0
            lr = lam[0, m0:m1].copy()
            li = lam[1, m0:m1].copy()
            gm = gamma[m0:m1].copy()
            # c: the gradient reaching h_t from later steps.
            cr = gh_last[ib, m0:m1].copy()
            ci = gh_last[ib, N + m0 : N + m1].copy()
            # The sums over time: per block of rows in the tensors' dtype (so that the loop
            # vectorises at full width), added up across blocks in float64.
            sum_g = np.zeros(L, dtype=np.float64)
            sum_r = np.zeros(L, dtype=np.float64)
            sum_i = np.zeros(L, dtype=np.float64)
            blk_g = np.zeros(L, dtype=p.dtype)
            blk_r = np.zeros(L, dtype=p.dtype)
            blk_i = np.zeros(L, dtype=p.dtype)
            sink = 0.0
            for t in range(T - 1, -1, -1):
                if t == T - 1 or t % _BLOCK == _BLOCK - 1:
                    # Time runs downwards here, and several descending streams defeat the
                    # hardware prefetcher: the next block of rows is read once in ascending
                    # order so that it comes from cache (B=16, T=1024, N=128: 8.8 ms without,
                    # 3.8 ms with 128-row blocks).
                    lo = max(0, t - _BLOCK + 1)
                    sink += _prefetch(gh, ib, lo, t + 1, m0, m1)
                    sink += _prefetch(p, ib, lo, t + 1, m0, m1)
                    sink += _prefetch(h, ib, max(0, lo - 1), t, m0, m1)
                    for k in range(L):
                        sum_g[k] += blk_g[k]
                        sum_r[k] += blk_r[k]
                        sum_i[k] += blk_i[k]
                        blk_g[k] = 0.0
                        blk_r[k] = 0.0
                        blk_i[k] = 0.0
                if t > 0:
                    qr = h[ib, t - 1, m0:m1]
                    qi = h[ib, t - 1, N + m0 : N + m1]
                else:
                    qr = h0[ib, m0:m1]
                    qi = h0[ib, N + m0 : N + m1]
                pr = p[ib, t, m0:m1]
                pi = p[ib, t, N + m0 : N + m1]
                ghr = gh[ib, t, m0:m1]
                ghi = gh[ib, t, N + m0 : N + m1]
                gpr = gp[ib, t, m0:m1]
                gpi = gp[ib, t, N + m0 : N + m1]
                for k in range(L):
                    gr = ghr[k] + cr[k]
                    gi = ghi[k] + ci[k]
                    gpr[k] = gm[k] * gr
                    gpi[k] = gm[k] * gi
                    blk_g[k] += gr * pr[k] + gi * pi[k]
                    blk_r[k] += gr * qr[k] + gi * qi[k]
                    blk_i[k] += gi * qr[k] - gr * qi[k]
                    cr[k] = lr[k] * gr + li[k] * gi
                    ci[k] = lr[k] * gi - li[k] * gr
            for k in range(L):
                sum_g[k] += blk_g[k]
                sum_r[k] += blk_r[k]
                sum_i[k] += blk_i[k]
            dgamma[ib, m0:m1] = sum_g
            dlam[ib, m0:m1] = sum_r
            dlam[ib, N + m0 : N + m1] = sum_i
            dh0[ib, m0:m1] = cr
            dh0[ib, N + m0 : N + m1] = ci
            if sink < 0.0:
                # Never true (a sum of magnitudes); keeps the prefetching loads alive.
                dh0[ib, m0] = sink

    def _column_dots_loop(a, b, out):  # pragma: no cover - compiled
        B, T, H = a.shape
        for ib in prange(B):
            # Per block of rows in the tensors' dtype, added up across blocks in float64.
            total = np.zeros(H, dtype=np.float64)
            block = np.zeros(H, dtype=a.dtype)
            for t in range(T):
                a_row = a[ib, t]
                b_row = b[ib, t]
                for k in range(H):
                    block[k] += a_row[k] * b_row[k]
                if t % _BLOCK == _BLOCK - 1 or t == T - 1:
                    for k in range(H):
                        total[k] += block[k]
                        block[k] = 0.0
            out[ib] = total

    # Compiled lazily per dtype, threaded for large problems and single-threaded for small
    # ones (see memrnn.scan.native), and cached on disk.
    _forward_threaded = njit(parallel=True, cache=True, nogil=True)(_forward_loop)
    _forward_serial = njit(cache=True, nogil=True)(_forward_loop)
    _backward_threaded = njit(parallel=True, cache=True, nogil=True)(_backward_loop)
    _backward_serial = njit(cache=True, nogil=True)(_backward_loop)
    _column_dots_threaded = njit(parallel=True, cache=True, nogil=True)(_column_dots_loop)
    _column_dots_serial = njit(cache=True, nogil=True)(_column_dots_loop)


def _check(t: Tensor) -> None:
    if not AVAILABLE:
        raise RuntimeError("the native LRU kernel needs numba: pip install numba")
    if t.device.type != "cpu":
        raise RuntimeError(f"the native LRU kernel runs on CPU tensors, got device {t.device}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"the native LRU kernel does not support dtype {t.dtype}")


def _arr(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _threaded(p: Tensor) -> bool:
    return p.numel() // 2 >= PARALLEL_MIN_ELEMENTS


def lru_native_forward(p: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """h (B, T, 2N) and h_T (B, 2N) for p (B, T, 2N), lam = (Re λ, Im λ) (2, N), γ (N,) and
    h0 (B, 2N), all real of one dtype, complex numbers in the split layout."""
    _check(p)
    B, T, N2 = p.shape
    h = _empty((B, T, N2), p.dtype)
    h_last = torch.empty(B, N2, dtype=p.dtype)
    kernel = _forward_threaded if _threaded(p) else _forward_serial
    kernel(
        _arr(p),
        _arr(lam),
        _arr(gamma),
        _arr(h0),
        h.numpy(),
        h_last.numpy(),
        _chunk_size(B, N2 // 2),
    )
    return h, h_last


def lru_native_backward(
    p: Tensor, h: Tensor, h0: Tensor, lam: Tensor, gamma: Tensor, gh: Tensor, gh_last: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dL/dp (B, T, 2N), dL/dlam (2, N), dL/dγ (N,), dL/dh0 (B, 2N)) from those of
    h (B, T, 2N) and h_T (B, 2N), for the forward pass that produced h."""
    B, T, N2 = h.shape
    dtype = h.dtype
    gp = _empty((B, T, N2), dtype)
    dgamma = torch.empty(B, N2 // 2, dtype=torch.float64)
    dlam = torch.empty(B, N2, dtype=torch.float64)
    dh0 = torch.empty(B, N2, dtype=dtype)
    kernel = _backward_threaded if _threaded(h) else _backward_serial
    kernel(
        _arr(p),
        _arr(h),
        _arr(h0),
        _arr(lam),
        _arr(gamma),
        _arr(gh),
        _arr(gh_last),
        gp.numpy(),
        dgamma.numpy(),
        dlam.numpy(),
        dh0.numpy(),
        _chunk_size(B, N2 // 2),
    )
    dlam = dlam.sum(dim=0).reshape(2, N2 // 2).to(dtype)
    return gp, dlam, dgamma.sum(dim=0).to(dtype), dh0


def _column_dots(a: Tensor, b: Tensor) -> Tensor:
    """Σ_{B,T} a ⊙ b for a, b (B, T, H): (H,), accumulated in float64."""
    out = torch.empty(a.shape[0], a.shape[2], dtype=torch.float64)
    kernel = _column_dots_threaded if _threaded(a) else _column_dots_serial
    kernel(_arr(a), _arr(b), out.numpy())
    return out.sum(dim=0).to(a.dtype)


class _LRULayer(torch.autograd.Function):
    """The LRU layer over a sequence as one autograd node: GEMMs into preallocated buffers
    around the compiled recurrence kernels."""

    @staticmethod
    def forward(ctx, u, w_in, lam, gamma, h0, w_out, d):  # type: ignore[override]
        B, T, H = u.shape
        N2 = w_in.shape[0]
        u = u.contiguous()
        p = _empty((B, T, N2), u.dtype)
        torch.mm(u.view(B * T, H), w_in.T, out=p.view(B * T, N2))
        h, h_last = lru_native_forward(p, lam, gamma, h0)
        y = _empty((B, T, H), u.dtype)
        torch.mul(u, d, out=y)
        y.view(B * T, H).addmm_(h.view(B * T, N2), w_out.T)
        ctx.save_for_backward(u, w_in, lam, gamma, h0, w_out, d, p, h)
        return y, h_last

    @staticmethod
    def backward(ctx, gy, gh_last):  # type: ignore[override]
        u, w_in, lam, gamma, h0, w_out, d, p, h = ctx.saved_tensors
        B, T, H = u.shape
        N2 = w_in.shape[0]
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gh_last = torch.zeros_like(h0) if gh_last is None else gh_last
        gy2, u2 = gy.view(B * T, H), u.view(B * T, H)
        gh = _empty((B, T, N2), u.dtype)
        torch.mm(gy2, w_out, out=gh.view(B * T, N2))
        gp, dlam, dgamma, dh0 = lru_native_backward(p, h, h0, lam, gamma, gh, gh_last)
        del gh
        gp2 = gp.view(B * T, N2)
        need = ctx.needs_input_grad
        du = dw_in = dw_out = dd = None
        if need[0]:
            du = _empty((B, T, H), u.dtype)
            torch.mul(gy, d, out=du)
            du.view(B * T, H).addmm_(gp2, w_in)
        if need[1]:
            dw_in = gp2.T @ u2
        if need[5]:
            dw_out = gy2.T @ h.view(B * T, N2)
        if need[6]:
            dd = _column_dots(gy, u)
        return du, dw_in, dlam, dgamma, dh0, dw_out, dd


def lru_layer_torch(
    u: Tensor, w_in: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, w_out: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """The same layer as `lru_layer` in torch ops and `linear_scan` (any device or dtype)."""
    N = w_in.shape[0] // 2
    p = u @ w_in.T  # (B, T, 2N)
    drive = gamma * torch.complex(p[..., :N], p[..., N:])  # (B, T, N)
    decay = torch.complex(lam[0], lam[1]).reshape(1, 1, N)
    h, h_last = linear_scan(decay, drive, torch.complex(h0[:, :N], h0[:, N:]))
    y = torch.cat([h.real, h.imag], dim=-1) @ w_out.T + d * u
    return y, torch.cat([h_last.real, h_last.imag], dim=-1)


def native_supported(u: Tensor) -> bool:
    """Whether `lru_layer` runs the compiled kernels for u: numba, CPU, float32/float64."""
    return AVAILABLE and u.device.type == "cpu" and u.dtype in SUPPORTED_DTYPES


def lru_layer(
    u: Tensor, w_in: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, w_out: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """y = Re(C h) + D ⊙ u over h_t = λ h_{t−1} + γ (B u_t) for u (B, T, H) from h0 (B, 2N):
    returns y (B, T, H) and h_T (B, 2N), differentiable in every argument.

    Complex numbers are in the split layout [real parts | imaginary parts] along the last axis:
    w_in = [B_re; B_im] (2N, H), lam = (Re λ, Im λ) (2, N), w_out = [C_re, −C_im] (H, 2N);
    γ (N,) and d (H,) are real, and all arguments share one real dtype. Runs the compiled
    kernels where `native_supported(u)`, else `lru_layer_torch`.
    """
    if not native_supported(u):
        return lru_layer_torch(u, w_in, lam, gamma, h0, w_out, d)
    return _LRULayer.apply(u, w_in, lam, gamma, h0, w_out, d)


__all__ = [
    "AVAILABLE",
    "SUPPORTED_DTYPES",
    "lru_layer",
    "lru_layer_torch",
    "lru_native_backward",
    "lru_native_forward",
    "native_supported",
]
