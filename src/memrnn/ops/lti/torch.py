"""The causal convolution of `memrnn.ops.lti` in batched torch ops, two methods.

- `fft_causal_conv`: multiply the spectra of u and h zero-padded to a fast FFT size ≥ 2T, so
  the circular convolution equals the linear one on the first T steps. O(T log T) per
  channel; the right choice for long sequences.
- `direct_causal_conv`: slide a window of the last L inputs (a strided view, no copy) and
  contract it with h in one matrix product. O(T·L) per channel; faster for short T or short
  (truncated) impulse responses, and exact up to the dtype's rounding.

Both are differentiable with ordinary autograd, with respect to u and h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from memrnn.ops.lti import check_conv_args


def fft_causal_conv(u: Tensor, h: Tensor) -> Tensor:
    """Causal convolution by FFT, zero-padded to at least 2T. See the module docstring."""
    check_conv_args(u, h, "fft_causal_conv")
    steps = u.shape[1]
    squeeze = h.dim() == 1
    h2 = h[:steps].unsqueeze(-1) if squeeze else h[:steps]
    # The padded length only has to reach T + L - 1; round 2T up to a size with small factors.
    n = _fast_fft_size(2 * steps)
    # Time on the last axis: contiguous FFTs and a free reshape afterwards.
    u_f = torch.fft.rfft(u.transpose(1, 2), n=n, dim=-1)  # (B, C, F)
    if h.dim() == 3:
        g_f = torch.fft.rfft(h2.permute(1, 2, 0), n=n, dim=-1)  # (C, N, F)
        y_f = torch.einsum("bcf,cnf->bnf", u_f, g_f)  # (B, N, F)
        return torch.fft.irfft(y_f, n=n, dim=-1)[..., :steps].transpose(1, 2)  # (B, T, N)
    h_f = torch.fft.rfft(h2.transpose(0, 1), n=n, dim=-1)  # (N, F)
    y = torch.fft.irfft(u_f.unsqueeze(2) * h_f, n=n, dim=-1)[..., :steps]  # (B, C, N, T)
    y = y.permute(0, 3, 1, 2)  # (B, T, C, N)
    return y.squeeze(-1) if squeeze else y


def direct_causal_conv(u: Tensor, h: Tensor) -> Tensor:
    """Causal convolution as one matrix product over a sliding window. See the module docstring."""
    check_conv_args(u, h, "direct_causal_conv")
    steps = u.shape[1]
    squeeze = h.dim() == 1
    h2 = h[:steps].unsqueeze(-1) if squeeze else h[:steps]
    taps = h2.shape[0]
    # Window w[b, t, c, k] = u[b, t - (L-1) + k, c], zero before the start of the sequence.
    padded = F.pad(u, (0, 0, taps - 1, 0))  # (B, T + L - 1, C)
    window = padded.unfold(1, taps, 1)  # (B, T, C, L)
    if h.dim() == 3:
        # Contract channels and taps together: (B, T, C·L) @ (C·L, N).
        kernel = h2.flip(0).permute(1, 0, 2).reshape(-1, h2.shape[2])
        return window.reshape(*window.shape[:2], -1) @ kernel  # (B, T, N)
    y = torch.matmul(window, h2.flip(0))  # (B, T, C, N)
    return y.squeeze(-1) if squeeze else y


def _fast_fft_size(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5."""
    m = max(n, 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def causal_conv(u: Tensor, h: Tensor, method: str) -> Tensor:
    """`fft_causal_conv` or `direct_causal_conv`, by `method` ("fft" or "direct")."""
    return fft_causal_conv(u, h) if method == "fft" else direct_causal_conv(u, h)


__all__ = ["causal_conv", "direct_causal_conv", "fft_causal_conv"]
