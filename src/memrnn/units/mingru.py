"""minGRU: a GRU whose gates do not see the previous state, so the recurrence is linear.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs all we needed?" (2024),
https://arxiv.org/abs/2410.01201 (docs/units/mingru.md):

    z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h,   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The update is the scan h_t = a_t ⊙ h_{t−1} + b_t with a_t = 1 − z_t, b_t = z_t ⊙ h̃_t, so the
parallel mode is one op over the whole sequence, projection included (`memrnn.ops.mingru`; on
CPU compiled kernels that fuse the scan with the projection).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.ops.mingru import mingru_layer
from memrnn.units.base import RecurrentUnit, register_unit


class MinGRUState(NamedTuple):
    h: Tensor  # (B, H) hidden state


@register_unit("mingru")
class MinGRU(RecurrentUnit):
    """minGRU ("Were RNNs all we needed?", https://arxiv.org/abs/2410.01201).

        z_t = σ(W_z x_t + b_z),  h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ (W_h x_t + b_h),  y_t = h_t
        (or y_t = W_o h_t + b_o when `output_size` is given)

    Args:
        input_size: features D of the input x.
        hidden_size: width H of the state h.
        output_size: features of y; None (default) returns h itself, otherwise an output
            linear projection H -> output_size is added.
        mode: "parallel" (default; one linear scan over time) or "recurrent" (step loop,
            same weights, same math).
        bias: whether the gate and candidate projections have biases (default True).
        backend: the backend of the parallel mode's op, `memrnn.ops.mingru` (default "auto").
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: MinGRUState(h: (B, H)).

    Example:
        >>> unit = MinGRU(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str = "parallel",
        bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        factory = {"device": device, "dtype": dtype}
        # Gate and candidate in one matmul: rows [0, H) are W_z, rows [H, 2H) are W_h.
        self.in_proj = nn.Linear(input_size, 2 * hidden_size, bias=bias, **factory)
        self.out_proj = (
            nn.Linear(hidden_size, output_size, **factory) if output_size is not None else None
        )

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MinGRUState:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        return MinGRUState(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the scan coefficients a = 1 − z and b = z ⊙ h̃ for inputs (..., D)."""
        z_pre, candidate = self.in_proj(x).chunk(2, dim=-1)
        z = torch.sigmoid(z_pre)
        return 1 - z, z * candidate

    def _output(self, h: Tensor) -> Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _forward_parallel(self, x: Tensor, state: MinGRUState) -> tuple[Tensor, MinGRUState]:
        weight = self.in_proj.weight  # (2H, D): [W_z; W_h]
        # The projection, gates and scan as one op (on CPU: chunks of rows that stay in cache).
        h = mingru_layer(x, weight, self.in_proj.bias, state.h.to(weight.dtype), self.backend)
        return self._output(h), MinGRUState(h[:, -1])

    def _step(self, x_t: Tensor, state: MinGRUState) -> tuple[Tensor, MinGRUState]:
        a, b = self._gates(x_t)  # (B, H) each
        h = a * state.h.to(b.dtype) + b
        return self._output(h), MinGRUState(h)


__all__ = ["MinGRU", "MinGRUState"]
