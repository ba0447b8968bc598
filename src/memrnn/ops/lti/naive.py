"""Ground-truth causal convolution: the sum over the taps of h as a loop over time.

y_t = Σ_{j=0}^{min(t, L-1)} h_j · u_{t-j}
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv(u: Tensor, h: Tensor, method: str = "direct") -> Tensor:
    """See `memrnn.ops.lti.causal_conv` for the shapes of u, h and the result (`method` is
    taken for the backends' common signature: the sum over taps is the only one here)."""
    taps = min(h.shape[0], u.shape[1])
    ys = []
    for t in range(u.shape[1]):
        y_t = 0
        for j in range(min(t + 1, taps)):
            u_past = u[:, t - j]  # (B, C)
            if h.dim() == 1:
                y_t = y_t + h[j] * u_past  # (B, C)
            elif h.dim() == 2:
                y_t = y_t + u_past.unsqueeze(-1) * h[j]  # (B, C, N)
            else:
                y_t = y_t + u_past @ h[j]  # (B, N)
        ys.append(y_t)
    return torch.stack(ys, dim=1)


__all__ = ["causal_conv"]
