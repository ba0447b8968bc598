"""Bistable recurrent cells: BRC and nBRC, nonlinear RNNs with persistent (bistable) memory.

Vecoven, Ernst, Drion, "A bio-inspired bistable recurrent cell allows for long-lasting memory",
PLOS ONE 16(6), 2021, https://doi.org/10.1371/journal.pone.0252676 (docs/units/brc.md):

    a_t = 1 + tanh(U_a x_t + w_a ⊙ h_{t−1} + b_a),   c_t = σ(U_c x_t + w_c ⊙ h_{t−1} + b_c)
    h_t = c_t ⊙ h_{t−1} + (1 − c_t) ⊙ tanh(U x_t + a_t ⊙ h_{t−1} + b)

A neuron with a_t > 1 is bistable: with zero input it settles on one of two nonzero fixed
points depending on where it started, and holds it indefinitely. nBRC ("neuromodulated" BRC)
replaces the per-neuron feedbacks w_a ⊙ h, w_c ⊙ h with full matrices W_a h, W_c h.

The recurrence is nonlinear in h, so both cells are recurrent-only. The input terms
U_a x, U_c x, U x are computed for the whole sequence in one matmul before the time loop, the
op `memrnn.ops.brc.bistable_layer` (on CPU compiled kernels, else torch ops per step).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.ops.brc import bistable_cell, bistable_layer
from memrnn.units.base import RecurrentUnit, register_unit


class BRCState(NamedTuple):
    h: Tensor  # (B, H) hidden state


class _BistableCell(RecurrentUnit):
    """Shared BRC/nBRC machinery; subclasses define the memory feedback `_feedback(h)`."""

    modes = ("recurrent",)
    # Whether the memory feedback is a full matrix (nBRC) or per neuron (BRC).
    dense_feedback = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str = "recurrent",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        factory = {"device": device, "dtype": dtype}
        # Rows [0, H): U_a, [H, 2H): U_c, [2H, 3H): U.
        self.in_proj = nn.Linear(input_size, 3 * hidden_size, **factory)
        self.out_proj = (
            nn.Linear(hidden_size, output_size, **factory) if output_size is not None else None
        )

    @torch.no_grad()
    def _input_init(self) -> None:
        """U_a, U_c, U: Glorot uniform, each on its own (H, D) block; biases 0 (paper, Methods)."""
        for block in self.in_proj.weight.chunk(3, dim=0):
            nn.init.xavier_uniform_(block)
        nn.init.zeros_(self.in_proj.bias)

    def _feedback_weight(self) -> Tensor:
        """The feedback's parameters as `memrnn.ops.brc.bistable_layer` takes them."""
        raise NotImplementedError

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> BRCState:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        return BRCState(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def _output(self, h: Tensor) -> Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _forward_recurrent(self, x: Tensor, state: BRCState) -> tuple[Tensor, BRCState]:
        drive = self.in_proj(x)  # (B, T, 3H)
        h0 = state.h.to(drive.dtype)
        hs = bistable_layer(drive, h0, self._feedback_weight(), self.dense_feedback, self.backend)
        return self._output(hs), BRCState(hs[:, -1])

    def _step(self, x_t: Tensor, state: BRCState) -> tuple[Tensor, BRCState]:
        h = bistable_cell(self.in_proj(x_t), state.h, self._feedback_weight(), self.dense_feedback)
        return self._output(h), BRCState(h)


@register_unit("brc")
class BRC(_BistableCell):
    """Bistable recurrent cell ("A bio-inspired bistable recurrent cell allows for
    long-lasting memory", https://doi.org/10.1371/journal.pone.0252676).

        a_t = 1 + tanh(U_a x_t + w_a ⊙ h_{t−1} + b_a),  c_t = σ(U_c x_t + w_c ⊙ h_{t−1} + b_c)
        h_t = c_t ⊙ h_{t−1} + (1 − c_t) ⊙ tanh(U x_t + a_t ⊙ h_{t−1} + b)

    Recurrent-only (the recurrence is nonlinear in h): asking for mode="parallel" raises.

    Args:
        input_size: features D of the input x.
        hidden_size: number H of neurons.
        output_size: features of y; None (default) returns h, otherwise an output linear
            projection H -> output_size is added.
        mode: "recurrent" (default and only mode).
        backend: how a sequence runs, the backend of the op `memrnn.ops.brc`: "numba",
            compiled kernels for the whole sequence (CPU, float32/float64), "naive", a torch
            loop of `step`'s update, or "auto" (default), "numba" where it runs, else "naive".
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: BRCState(h: (B, H)).

    Example:
        >>> unit = BRC(3, 8)
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
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, output_size, mode, backend, device=device, dtype=dtype
        )
        factory = {"device": device, "dtype": dtype}
        self.w_a = nn.Parameter(torch.empty(hidden_size, **factory))
        self.w_c = nn.Parameter(torch.empty(hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._input_init()
        self._memory_init()

    @torch.no_grad()
    def _memory_init(self) -> None:
        """w_a, w_c: per-neuron feedback vectors initialised to 1 (paper, Methods)."""
        nn.init.ones_(self.w_a)
        nn.init.ones_(self.w_c)

    def _feedback_weight(self) -> Tensor:
        return torch.stack([self.w_a, self.w_c])  # (2, H)


@register_unit("nbrc")
class NBRC(_BistableCell):
    """Neuromodulated bistable recurrent cell ("A bio-inspired bistable recurrent cell allows
    for long-lasting memory", https://doi.org/10.1371/journal.pone.0252676).

        a_t = 1 + tanh(U_a x_t + W_a h_{t−1} + b_a),  c_t = σ(U_c x_t + W_c h_{t−1} + b_c)
        h_t = c_t ⊙ h_{t−1} + (1 − c_t) ⊙ tanh(U x_t + a_t ⊙ h_{t−1} + b)

    Recurrent-only (the recurrence is nonlinear in h): asking for mode="parallel" raises.

    Args:
        input_size: features D of the input x.
        hidden_size: number H of neurons.
        output_size: features of y; None (default) returns h, otherwise an output linear
            projection H -> output_size is added.
        mode: "recurrent" (default and only mode).
        backend: how a sequence runs, the backend of the op `memrnn.ops.brc`: "numba",
            compiled kernels for the whole sequence (CPU, float32/float64), "naive", a torch
            loop of `step`'s update, or "auto" (default), "numba" where it runs, else "naive".
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: BRCState(h: (B, H)).

    Example:
        >>> unit = NBRC(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 8)
    """

    dense_feedback = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str = "recurrent",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, output_size, mode, backend, device=device, dtype=dtype
        )
        factory = {"device": device, "dtype": dtype}
        # Rows [0, H): W_a, [H, 2H): W_c, so that both feedbacks are one matmul.
        self.memory_weight = nn.Parameter(torch.empty(2 * hidden_size, hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._input_init()
        self._memory_init()

    @torch.no_grad()
    def _memory_init(self) -> None:
        """W_a, W_c: orthogonal initialisation, each on its own (H, H) block (paper, Methods)."""
        for block in self.memory_weight.chunk(2, dim=0):
            nn.init.orthogonal_(block)

    @property
    def W_a(self) -> Tensor:
        return self.memory_weight[: self.hidden_size]

    @property
    def W_c(self) -> Tensor:
        return self.memory_weight[self.hidden_size :]

    def _feedback_weight(self) -> Tensor:
        return self.memory_weight  # (2H, H)


__all__ = ["BRC", "NBRC", "BRCState"]
