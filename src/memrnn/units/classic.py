"""LSTM and GRU baselines: torch.nn.LSTM / torch.nn.GRU behind the unit contract.

Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997,
https://doi.org/10.1162/neco.1997.9.8.1735; Cho et al., "Learning phrase representations using
RNN encoder-decoder for statistical machine translation", EMNLP 2014,
https://arxiv.org/abs/1406.1078. The equations are torch.nn's.

Both are recurrent-only: `forward` runs the fused cuDNN/ATen kernel over the whole sequence
and `step` runs the same module on a length-1 sequence, so the two agree exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.units.base import RecurrentUnit, register_unit


class LSTMState(NamedTuple):
    h: Tensor  # (B, H) hidden state
    c: Tensor  # (B, H) cell state


class GRUState(NamedTuple):
    h: Tensor  # (B, H) hidden state


class _TorchRNN(RecurrentUnit):
    """Shared wrapper: one single-layer batch_first torch.nn RNN plus an optional projection."""

    modes = ("recurrent",)

    def __init__(
        self,
        rnn_cls: type[nn.LSTM] | type[nn.GRU],
        input_size: int,
        hidden_size: int,
        output_size: int | None,
        mode: str,
        bias: bool,
        backend: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        self.rnn = rnn_cls(
            input_size, hidden_size, bias=bias, batch_first=True, device=device, dtype=dtype
        )
        self.out_proj = (
            nn.Linear(hidden_size, output_size, device=device, dtype=dtype)
            if output_size is not None
            else None
        )

    def _zeros(
        self,
        batch_size: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> Tensor:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def _output(self, y: Tensor) -> Tensor:
        return y if self.out_proj is None else self.out_proj(y)

    def _to_torch(self, state: NamedTuple) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError

    def _from_torch(self, hidden: Tensor | tuple[Tensor, ...]) -> NamedTuple:
        raise NotImplementedError

    def _forward_recurrent(self, x: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        y, hidden = self.rnn(x, self._to_torch(state))  # (B, T, H)
        return self._output(y), self._from_torch(hidden)

    def _step(self, x_t: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        y, hidden = self.rnn(x_t.unsqueeze(1), self._to_torch(state))  # (B, 1, H)
        return self._output(y.squeeze(1)), self._from_torch(hidden)


@register_unit("lstm")
class LSTM(_TorchRNN):
    """LSTM ("Long short-term memory", https://doi.org/10.1162/neco.1997.9.8.1735), as
    torch.nn.LSTM computes it (single layer, batch first).

        (h_t, c_t) = LSTMCell(x_t, (h_{t−1}, c_{t−1})),   y_t = h_t (or W_o h_t + b_o)

    Args:
        input_size: features D of the input x.
        hidden_size: width H of h and c.
        output_size: features of y; None (default) returns h, otherwise an output linear
            projection H -> output_size is added.
        mode: "recurrent" (default and only mode; forward still uses the fused kernel).
        backend: accepted for the shared unit interface and checked; torch's own kernel
            always runs.
        bias: whether the gates have biases (default True).
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: LSTMState(h: (B, H), c: (B, H)).

    Example:
        >>> unit = LSTM(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.c.shape == (2, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str = "recurrent",
        bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            nn.LSTM, input_size, hidden_size, output_size, mode, bias, backend, device, dtype
        )

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LSTMState:
        zeros = self._zeros(batch_size, device, dtype)
        return LSTMState(zeros, zeros.clone())

    def _to_torch(self, state: LSTMState) -> tuple[Tensor, Tensor]:
        return state.h.unsqueeze(0).contiguous(), state.c.unsqueeze(0).contiguous()

    def _from_torch(self, hidden: tuple[Tensor, Tensor]) -> LSTMState:
        return LSTMState(hidden[0].squeeze(0), hidden[1].squeeze(0))


@register_unit("gru")
class GRU(_TorchRNN):
    """GRU ("Learning phrase representations using RNN encoder-decoder for statistical machine
    translation", https://arxiv.org/abs/1406.1078), as torch.nn.GRU computes it (single layer,
    batch first).

        h_t = GRUCell(x_t, h_{t−1}),   y_t = h_t (or W_o h_t + b_o)

    Args:
        input_size: features D of the input x.
        hidden_size: width H of h.
        output_size: features of y; None (default) returns h, otherwise an output linear
            projection H -> output_size is added.
        mode: "recurrent" (default and only mode; forward still uses the fused kernel).
        backend: accepted for the shared unit interface and checked; torch's own kernel
            always runs.
        bias: whether the gates have biases (default True).
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: GRUState(h: (B, H)).

    Example:
        >>> unit = GRU(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str = "recurrent",
        bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            nn.GRU, input_size, hidden_size, output_size, mode, bias, backend, device, dtype
        )

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GRUState:
        return GRUState(self._zeros(batch_size, device, dtype))

    def _to_torch(self, state: GRUState) -> Tensor:
        return state.h.unsqueeze(0).contiguous()

    def _from_torch(self, hidden: Tensor) -> GRUState:
        return GRUState(hidden.squeeze(0))


__all__ = ["GRU", "LSTM", "GRUState", "LSTMState"]
