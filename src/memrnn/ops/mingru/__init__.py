"""The minGRU layer as one op: input projection and recurrence (docs/units/mingru.md).

    [z_pre | h̃] = x Wᵀ + b,   z = σ(z_pre),   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

Backends: `naive` (loop), `torch` (GEMM + gates + `linear_scan`), `numba` (chunks of rows
that stay in cache, one autograd node; CPU float32/float64).
"""

from __future__ import annotations

from torch import Tensor

from memrnn.ops import dispatch


def mingru_layer(
    x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor, backend: str = "auto"
) -> Tensor:
    """h (B, T, H) of the minGRU over x (B, T, D) from h0 (B, H), differentiable in every
    argument: weight (2H, D) (rows [0, H) the gate's, [H, 2H) the candidate's), bias (2H,) or
    None. All tensors share one dtype."""
    backend = dispatch.resolve("mingru", backend, x.device, x.dtype)
    return dispatch.implementation("mingru", backend, "mingru_layer")(x, weight, bias, h0)


__all__ = ["mingru_layer"]
