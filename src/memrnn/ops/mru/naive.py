"""Ground-truth MRU recurrence: the gates in torch ops, then a plain loop over time.

    z_t = H(|c_t| − β_t),  s_t = sign(c_t),  h_t = (1 − z_t + ε z_t) h_{t−1} + z_t s_t

H and sign are exact forward and take the surrogate derivative backward
(`memrnn.ops.surrogate`); autograd traces the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from memrnn.ops.surrogate import SurrogateFn, get_surrogate, heaviside, sign


def mru_gates(
    c: Tensor, beta: Tensor, epsilon: float, derivative: SurrogateFn
) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, z) of the scan h_t = a_t h_{t−1} + b_t: a = 1 − z + ε z, b = z s."""
    z = heaviside(c.abs() - beta, derivative)
    s = sign(c, derivative)
    return 1.0 - z + epsilon * z, z * s, z


def mru_scan(
    c: Tensor,
    beta: Tensor,
    h0: Tensor,
    epsilon: float,
    surrogate: str | SurrogateFn,
    sharpness: float,
    beta_abs: bool = False,
) -> tuple[Tensor, Tensor]:
    """(h (B, T, N), mean write rate); see `memrnn.ops.mru.mru_scan`."""
    beta = beta.abs() if beta_abs else beta
    a, b, z = mru_gates(c, beta, epsilon, get_surrogate(surrogate, sharpness))
    a, b = a.expand_as(c), b.expand_as(c)
    h, hs = h0, []
    for t in range(c.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1), z.mean()


def layer_around(scan: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., Any]:
    """`mru_layer` built on a backend's `mru_scan`: projection, recurrence, readout."""

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(y, h_T, mean write rate); see `memrnn.ops.mru.mru_layer`."""
        c, beta_raw = F.linear(x, w_in, b_in).chunk(2, dim=-1)  # (B, T, N) each
        h, rate = scan(c, beta_raw, h0, epsilon, surrogate, sharpness, beta_abs=True)
        return F.linear(h, w_out, b_out), h[:, -1], rate

    return mru_layer


mru_layer = layer_around(mru_scan)

__all__ = ["layer_around", "mru_gates", "mru_layer", "mru_scan"]
