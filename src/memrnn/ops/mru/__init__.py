"""The memory recurrent unit (BMRU, CMRU, ε-family) as ops (docs/units/mru.md).

    z_t = H(|c_t| − β_t),  s_t = sign(c_t),  h_t = (1 − z_t + ε z_t) h_{t−1} + z_t s_t

H and sign are exact forward and take a surrogate derivative backward
(`memrnn.ops.surrogate`). `mru_scan` runs the recurrence from candidates c and thresholds β;
`mru_layer` is the whole layer with an input-dependent threshold: [c | β_raw] = x w_inᵀ + b_in,
β = |β_raw|, the recurrence, y = h w_outᵀ + b_out. Both also return the mean write rate z̄
(differentiable, for the write-rate penalty).

Backends: `naive` (loop), `torch` (gates + `linear_scan`, any device, any surrogate), `numba`
(fused compiled kernels; CPU float32/float64 and a named surrogate).
"""

from __future__ import annotations

from torch import Tensor

from memrnn.ops import dispatch
from memrnn.ops.mru.naive import mru_gates
from memrnn.ops.surrogate import SurrogateFn


def _resolve(backend: str, x: Tensor, surrogate: str | SurrogateFn, function: str) -> str:
    # The compiled kernels branch on a surrogate's name; a callable one runs in torch ops.
    named = isinstance(surrogate, str)
    return dispatch.resolve("mru", backend, x.device, x.dtype, compiled=named, function=function)


def mru_scan(
    c: Tensor,
    beta: Tensor,
    h0: Tensor,
    epsilon: float,
    surrogate: str | SurrogateFn = "atan",
    sharpness: float = 1.0,
    beta_abs: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The MRU recurrence; returns (h (B, T, N), mean write rate z̄).

    Args:
        c: candidates (B, T, N).
        beta: thresholds, (B, T, N) or broadcastable from (N,) / (1, 1, N) / (B, 1, N).
        h0: initial state (B, N).
        epsilon: 0 (BMRU) to 1 (CMRU).
        surrogate, sharpness: the surrogate derivative of H and sign and its k.
        beta_abs: use |beta| (and its gradient) instead of beta.
        backend: see `memrnn.ops.dispatch`.
    """
    run = dispatch.implementation("mru", _resolve(backend, c, surrogate, "mru_scan"), "mru_scan")
    return run(c, beta, h0, epsilon, surrogate, sharpness, beta_abs)


def mru_layer(
    x: Tensor,
    w_in: Tensor,
    b_in: Tensor | None,
    h0: Tensor,
    w_out: Tensor,
    b_out: Tensor | None,
    epsilon: float,
    surrogate: str | SurrogateFn,
    sharpness: float,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The MRU layer with an input-dependent threshold; returns (y, h_T, z̄).

    x (B, T, D); w_in (2N, D) (rows [0, N) the candidate's, [N, 2N) the threshold's) and
    b_in (2N,) or None; h0 (B, N); w_out (O, N) and b_out (O,) or None. Differentiable in
    every tensor argument; all tensors share x's dtype.
    """
    run = dispatch.implementation("mru", _resolve(backend, x, surrogate, "mru_layer"), "mru_layer")
    return run(x, w_in, b_in, h0, w_out, b_out, epsilon, surrogate, sharpness)


__all__ = ["mru_gates", "mru_layer", "mru_scan"]
