"""Spike encodings of static intensities in [0, 1] for spiking networks.

Rate encoding (SRC paper, De Geeter et al. 2024, https://arxiv.org/abs/2306.03623): `n_empty`
silent steps, then `n_steps` steps where each feature spikes independently with probability
`p_max × intensity` (defaults 20, 200, 0.25).

Latency encoding (ours): each feature with intensity v > `min_intensity` spikes exactly once,
at step round((1 − v) × (n_steps − 1)) after `n_empty` silent steps, so brighter pixels spike
earlier (v = 1 at the first coding step, v → 0 at the last); features at or below
`min_intensity` never spike. Deterministic.

Example:
    >>> spikes = rate_encode(torch.rand(8, 64), generator=torch.Generator().manual_seed(0))
    >>> assert spikes.shape == (8, 220, 64)
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_intensities(x: Tensor, owner: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{owner}: intensities must be (B, features); got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{owner}: intensities must lie in [0, 1]")


def rate_encode(
    x: Tensor,
    n_steps: int = 200,
    n_empty: int = 20,
    p_max: float = 0.25,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(B, F) intensities -> (B, n_empty + n_steps, F) Bernoulli spikes (0/1)."""
    _check_intensities(x, "rate_encode")
    if not 0.0 <= p_max <= 1.0:
        raise ValueError(f"rate_encode: `p_max` must be in [0, 1], got {p_max!r}")
    B, F = x.shape
    p = (p_max * x.to(torch.float32)).unsqueeze(1).expand(B, n_steps, F)
    draws = torch.rand(B, n_steps, F, generator=generator, device=x.device)
    coded = (draws < p).to(dtype)
    return torch.cat([coded.new_zeros(B, n_empty, F), coded], dim=1)


def latency_encode(
    x: Tensor,
    n_steps: int = 200,
    n_empty: int = 20,
    min_intensity: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(B, F) intensities -> (B, n_empty + n_steps, F), one spike per feature (see module doc)."""
    _check_intensities(x, "latency_encode")
    B, F = x.shape
    out = torch.zeros(B, n_empty + n_steps, F, dtype=dtype, device=x.device)
    v = x.to(torch.float64)
    when = n_empty + torch.round((1.0 - v) * (n_steps - 1)).long()  # (B, F)
    fires = v > min_intensity
    out.scatter_(1, when.unsqueeze(1), fires.unsqueeze(1).to(dtype))
    return out


__all__ = ["latency_encode", "rate_encode"]
