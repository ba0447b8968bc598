"""Ground-truth SRC: one step in torch ops, and a plain loop of it over time.

Per neuron, from the integrator input u_t = W_s s_t:

    i_t  = α_i i_{t−1} + u_t,   x_t = ρ tanh(i_t / ρ)
    h_t  = tanh(((x_t + b_h) + r h_{t−1}) + r_s hs_{t−1})
    z_t  = z_hyp − (z_hyp − z_dep) σ(10 (h_{t−1} − 0.5)),   hs_t = z_t hs_{t−1} + (1 − z_t) h_{t−1}
    y_t  = ReLU(h_t)

float32 cells compute each step in float64 and round the carried state to float32 (every
backend does the same; see docs/units/src.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SRCConstants(NamedTuple):
    alpha_i: float
    rho: float
    r: float
    r_s: float
    z_hyp: float
    z_dep: float
    straight_through: bool
    detach_recurrence: bool


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 cells compute in float64 and store float32 states (see the module notes).
    return torch.float64 if dtype == torch.float32 else dtype


def src_step(
    u_t: Tensor, i: Tensor, h: Tensor, hs: Tensor, bias: Tensor, c: SRCConstants
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y_t, i_t, h_t, hs_t) from u_t (B, N) and the state before it. Differentiable."""
    dtype, work = u_t.dtype, work_dtype(u_t.dtype)
    if work != dtype:
        out = src_step(u_t.to(work), i.to(work), h.to(work), hs.to(work), bias.to(work), c)
        y, i, h, hs = (t.to(dtype) for t in out)
        return y, i, h, hs
    h_prev, hs_prev = (h.detach(), hs.detach()) if c.detach_recurrence else (h, hs)
    i = c.alpha_i * i + u_t
    x = c.rho * torch.tanh(i / c.rho)
    # Grouped as ((x + b_h) + r h) + r_s hs, the order the fused loops use.
    h = torch.tanh((x + bias) + c.r * h_prev + c.r_s * hs_prev)
    z = c.z_hyp - (c.z_hyp - c.z_dep) * torch.sigmoid(10.0 * (h_prev - 0.5))
    hs = z * hs_prev + (1.0 - z) * h_prev
    y = torch.relu(h)
    if c.straight_through:
        y = h + (y - h).detach()
    return y, i, h, hs


def src_loop(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, c: SRCConstants
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y (B, T, N), i_T, h_T, hs_T): `src_step` over u (B, T, N), recorded by autograd."""
    i, h, hs, ys = i0, h0, hs0, []
    for u_t in u.unbind(1):
        y_t, i, h, hs = src_step(u_t, i, h, hs, bias, c)
        ys.append(y_t)
    return torch.stack(ys, dim=1), i, h, hs


__all__ = ["SRCConstants", "src_loop", "src_step", "work_dtype"]
