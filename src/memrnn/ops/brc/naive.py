"""Ground-truth BRC/nBRC recurrence: a plain loop of torch ops over time.

    a_t = 1 + tanh(drive_a,t + f_a(h_{t−1})),   c_t = σ(drive_c,t + f_c(h_{t−1}))
    h_t = c_t ⊙ h_{t−1} + (1 − c_t) ⊙ tanh(drive_h,t + a_t ⊙ h_{t−1})

with the feedback f = (w_a ⊙ h, w_c ⊙ h) (BRC) or (W_a h, W_c h) (nBRC, `dense`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bistable_cell(drive_t: Tensor, h: Tensor, weight: Tensor, dense: bool) -> Tensor:
    """One update from the input terms drive_t (B, 3H) and h (B, H)."""
    in_a, in_c, in_h = drive_t.chunk(3, dim=-1)
    feedback = h @ weight.T if dense else h.repeat(1, 2) * weight.reshape(1, -1)  # (B, 2H)
    fb_a, fb_c = feedback.chunk(2, dim=-1)
    a = 1 + torch.tanh(in_a + fb_a)
    c = torch.sigmoid(in_c + fb_c)
    return c * h + (1 - c) * torch.tanh(in_h + a * h)


def bistable_layer(drive: Tensor, h0: Tensor, weight: Tensor, dense: bool) -> Tensor:
    """h (B, T, H); see `memrnn.ops.brc.bistable_layer` for the arguments."""
    h, hs = h0, []
    for drive_t in drive.unbind(1):
        h = bistable_cell(drive_t, h, weight, dense)
        hs.append(h)
    return torch.stack(hs, dim=1)


__all__ = ["bistable_cell", "bistable_layer"]
