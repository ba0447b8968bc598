"""Ground-truth LRU layer: complex arithmetic and a plain loop over time.

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B u_t),   y_t = Re(C h_t) + D ⊙ u_t

with the arguments in the split layout of `memrnn.ops.lru.lru_layer`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lru_layer(
    u: Tensor, w_in: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, w_out: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """(y (B, T, H), h_T (B, 2N)); see `memrnn.ops.lru.lru_layer` for the layout."""
    N = w_in.shape[0] // 2
    b_mat = torch.complex(w_in[:N], w_in[N:])  # (N, H): B
    c_mat = torch.complex(w_out[:, :N], -w_out[:, N:])  # (H, N): C
    decay = torch.complex(lam[0], lam[1])  # (N,): λ
    h = torch.complex(h0[:, :N], h0[:, N:])  # (B, N)
    ys = []
    for t in range(u.shape[1]):
        u_t = u[:, t]  # (B, H)
        h = decay * h + gamma * (u_t.to(h.dtype) @ b_mat.T)
        ys.append((h @ c_mat.T).real + d * u_t)
    return torch.stack(ys, dim=1), torch.cat([h.real, h.imag], dim=-1)


__all__ = ["lru_layer"]
