"""The LRU layer as one op, in real arithmetic (docs/units/lru.md).

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B u_t),   y_t = Re(C h_t) + D ⊙ u_t,   h ∈ ℂ^N, u, y ∈ ℝ^H

Complex numbers are kept in a split layout, [real parts | imaginary parts] along the last
axis, so that both projections are single real GEMMs. Backends: `naive` (complex loop),
`torch` (GEMMs around one complex `linear_scan`), `numba` (chunks of rows that stay in cache,
one autograd node; CPU float32/float64).
"""

from __future__ import annotations

from torch import Tensor

from memrnn.ops import dispatch


def lru_layer(
    u: Tensor,
    w_in: Tensor,
    lam: Tensor,
    gamma: Tensor,
    h0: Tensor,
    w_out: Tensor,
    d: Tensor,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """y = Re(C h) + D ⊙ u over h_t = λ h_{t−1} + γ (B u_t) for u (B, T, H) from h0 (B, 2N):
    returns y (B, T, H) and h_T (B, 2N), differentiable in every argument.

    w_in = [B_re; B_im] (2N, H), lam = (Re λ, Im λ) (2, N), w_out = [C_re, −C_im] (H, 2N);
    γ (N,) and d (H,) are real, and all arguments share one real dtype.
    """
    backend = dispatch.resolve("lru", backend, u.device, u.dtype)
    run = dispatch.implementation("lru", backend, "lru_layer")
    return run(u, w_in, lam, gamma, h0, w_out, d)


__all__ = ["lru_layer"]
