"""Networks: an input encoder, a stack of residual blocks, a final norm and a task head.

    h = Encoder(x)                      linear (real inputs) or embedding (token ids)
    h = Block_N(... Block_1(h))         one unit kind per layer, or kinds alternating
    out = Head(Norm(h))                 last-step, masked mean, per-step or next-token

With `config.positional`, a code of the step index t (memrnn.models.positional) is appended to
the input of every block's unit, or added through a linear map to the encoder output (the same
as appending it to the encoder's input). The state counts the steps seen, so a step or a chunk
that continues a sequence gets the positions where the sequence is.

Heads: "last" reads the features at step `lengths - 1` (or T - 1); "mean" averages the valid
steps; "sequence" and "next-token" give one output per step. `step` runs the whole model one
step at a time with a constant-size state and returns the head output the model would give if
the sequence ended at that step, so that it equals the parallel forward on every prefix.

Args:
    config: a `ModelConfig` (see memrnn.models.config).

Shapes: x (B, T, input_size) float or (B, T) int64 tokens; out (B, output_size) for
"last"/"mean" heads, (B, T, output_size) for per-step heads. step: x_t (B, input_size) or (B,).

Example:
    >>> model = Network(ModelConfig(input_size=1, output_size=10, unit="bmru"))
    >>> out, state = model(torch.randn(8, 300, 1))
    >>> out_t, state = model.step(torch.randn(8, 1), state)
    >>> assert out.shape == out_t.shape == (8, 10)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memrnn.models.block import Block, build_unit, make_norm
from memrnn.models.config import ModelConfig
from memrnn.models.positional import PositionalCode
from memrnn.units.base import RecurrentUnit


class NetworkState(NamedTuple):
    """layers: each layer's unit state; pool_sum: (B, D) running feature sum (for the "mean"
    head); steps: (B,) number of steps seen."""

    layers: tuple[Any, ...]
    pool_sum: Tensor
    steps: Tensor


class Network(nn.Module):
    """Encoder -> blocks -> norm -> head; see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.arch == "spiking":
            raise ValueError("ModelConfig(arch='spiking') is built by build_model, not Network")
        if c.input_kind == "tokens":
            self.encoder: nn.Module = nn.Embedding(c.input_size, c.d_model)
        elif c.arch == "direct":
            # The direct architecture feeds the raw input to its single unit.
            self.encoder = nn.Identity()
        else:
            self.encoder = nn.Linear(c.input_size, c.d_model)
        width = c.d_model if (c.input_kind == "tokens" or c.arch == "stack") else c.input_size
        self.positional = (
            None
            if c.positional == "none"
            else PositionalCode(c.positional, c.positional_size, c.positional_max_len)
        )
        at_blocks = self.positional is not None and c.positional_at == "blocks"
        self.code_proj = (
            nn.Linear(self.positional.size, c.d_model, bias=False)
            if self.positional is not None and not at_blocks
            else None
        )
        if c.arch == "stack":
            self.blocks = nn.ModuleList(
                Block(
                    c.d_model,
                    name,
                    hidden_size=c.hidden_size,
                    unit_kwargs=c.kwargs_for(name),
                    norm=c.norm,
                    mlp=c.mlp,
                    mlp_ratio=c.mlp_ratio,
                    dropout=c.dropout,
                    extra_input=self.positional.size if at_blocks else 0,
                    output_gate=c.output_gate,
                    residual_scale=c.residual_scale,
                    conv_kernel=c.conv_kernel,
                )
                for name in c.layer_units()
            )
            self.norm: nn.Module = make_norm(c.norm, c.d_model)
            features = c.d_model
        else:
            name = c.layer_units()[0]
            unit = build_unit(name, width, c.hidden_size or c.d_model, **c.kwargs_for(name))
            self.blocks = nn.ModuleList([_Bare(unit)])
            self.norm = nn.Identity()
            features = unit.output_size
        self.features = features
        self.head = nn.Linear(features, c.output_size)

    # -- state --------------------------------------------------------------------------------
    def _like(self) -> Tensor:
        return self.head.weight

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NetworkState:
        ref = self._like()
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return NetworkState(
            layers=tuple(b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks),
            pool_sum=torch.zeros(batch_size, self.features, device=device, dtype=dtype),
            steps=torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    # -- forward ------------------------------------------------------------------------------
    def _encode(self, x: Tensor, name: str = "x") -> Tensor:
        if self.config.input_kind == "tokens":
            if x.is_floating_point():
                raise TypeError(
                    f"{type(self).__name__}: token inputs must be integer ids, got {x.dtype}"
                )
            return self.encoder(x)
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: real inputs must be floating point, got {x.dtype}"
            )
        # The units' own check, so that a mismatch fails here and not inside the encoder's
        # matmul (skipped under autocast, where mixed dtypes are expected).
        RecurrentUnit._check_dtype(self, x, name)
        return self.encoder(x)

    def features_seq(
        self, x: Tensor, state: NetworkState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, NetworkState | None, tuple[Any, ...]]:
        """Normalised per-step features (B, T, F) and the layers' final states (at each
        sequence's last valid step when `lengths` is given)."""
        h = self._encode(x)  # (B, T, D)
        code = None
        if self.positional is not None:
            B, T = h.shape[:2]
            first = (
                torch.zeros(B, dtype=torch.long, device=h.device) if state is None else state.steps
            )
            positions = first.view(B, 1) + torch.arange(T, device=h.device).view(1, T)  # (B, T)
            code = self.positional(positions, h.dtype)  # (B, T, P)
            if self.code_proj is not None:
                h, code = h + self.code_proj(code), None
        layer_states = [None] * len(self.blocks) if state is None else list(state.layers)
        finals = []
        for block, s in zip(self.blocks, layer_states, strict=True):
            if code is None:
                h, s = block(h, s, lengths=lengths)
            else:
                h, s = block(h, s, code, lengths=lengths)
            finals.append(s)
        return self.norm(h), state, tuple(finals)

    def forward(
        self, x: Tensor, state: NetworkState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, NetworkState]:
        """x (B, T, input_size) or (B, T) ids -> (head output, final state).

        With `lengths` (B,), the "last" head reads step lengths-1, the "mean" head averages the
        first `lengths` steps, and every layer returns its state at the last valid step, so
        the returned state continues each sequence where it ended.
        """
        B, T = x.shape[:2]
        steps_here = torch.full((B,), T, device=x.device, dtype=torch.long)
        if lengths is not None:
            if not isinstance(lengths, Tensor) or lengths.shape != (B,):
                raise ValueError(f"{type(self).__name__}: lengths must be a ({B},) integer tensor")
            lengths = lengths.to(device=x.device, dtype=torch.long)
            if bool((lengths < 1).any()) or bool((lengths > T).any()):
                raise ValueError(f"{type(self).__name__}: lengths must lie in [1, {T}]")
            steps_here = lengths
        feats, state, finals = self.features_seq(x, state, lengths)  # (B, T, F)
        if state is None:
            state = self.init_state(B, device=feats.device, dtype=feats.dtype)
        pool_sum = state.pool_sum
        head = self.config.head
        if head in ("sequence", "next-token"):
            out = self.head(feats)
        elif head == "last":
            if lengths is None:
                out = self.head(feats[:, -1])
            else:
                index = (lengths - 1).view(B, 1, 1).expand(B, 1, feats.shape[-1])
                out = self.head(feats.gather(1, index).squeeze(1))
        else:
            t = torch.arange(T, device=feats.device)
            mask = (t.view(1, T) < steps_here.view(B, 1)).to(feats.dtype)  # (B, T)
            pool_sum = pool_sum + (feats * mask.unsqueeze(-1)).sum(1)
            out = self.head(pool_sum / (state.steps + steps_here).to(feats.dtype).unsqueeze(-1))
        new_state = NetworkState(finals, pool_sum, state.steps + steps_here)
        return out, new_state

    def step(self, x_t: Tensor, state: NetworkState | None = None) -> tuple[Tensor, NetworkState]:
        """One step of the whole model: x_t (B, input_size) or (B,) ids -> (out_t, state)."""
        h = self._encode(x_t, "x_t")
        if state is None:
            state = self.init_state(h.shape[0], device=h.device, dtype=h.dtype)
        code = None
        if self.positional is not None:
            code = self.positional(state.steps.view(-1, 1), h.dtype)[:, 0]  # (B, P)
            if self.code_proj is not None:
                h, code = h + self.code_proj(code), None
        layers = []
        for block, s in zip(self.blocks, state.layers, strict=True):
            h, s = block.step(h, s) if code is None else block.step(h, s, code)
            layers.append(s)
        feats = self.norm(h)  # (B, F)
        pool_sum, steps = state.pool_sum, state.steps + 1
        if self.config.head == "mean":
            pool_sum = pool_sum + feats
            out = self.head(pool_sum / steps.to(feats.dtype).unsqueeze(-1))
        else:
            out = self.head(feats)
        return out, NetworkState(tuple(layers), pool_sum, steps)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SpikingModel(nn.Module):
    """The spiking network (memrnn.models.spiking) behind the Network interface.

    The leaky-integrator readout is already one output per step; the "last" head reads it at
    step lengths-1 (or T-1), the "mean" head averages it over the valid steps.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from memrnn.models.spiking import SpikingConfig

        self.config = config
        if config.input_kind != "real":
            raise ValueError("the spiking network takes real-valued (spike) inputs, not tokens")
        self.net = SpikingConfig(
            input_size=config.input_size, output_size=config.output_size, **config.spiking
        ).build()

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        ref = self.net.readout.weight
        return self.net.init_state(
            batch_size,
            ref.device if device is None else device,
            ref.dtype if dtype is None else dtype,
        )

    def forward(
        self, x: Tensor, state: Any = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        out, state = self.net(x, state, lengths=lengths)  # (B, T, C)
        B, T = out.shape[:2]
        head = self.config.head
        if head in ("sequence", "next-token"):
            return out, state
        steps = (
            torch.full((B,), T, device=out.device, dtype=torch.long)
            if lengths is None
            else lengths.to(device=out.device, dtype=torch.long)
        )
        if head == "last":
            index = (steps - 1).view(B, 1, 1).expand(B, 1, out.shape[-1])
            return out.gather(1, index).squeeze(1), state
        mask = (torch.arange(T, device=out.device).view(1, T) < steps.view(B, 1)).to(out.dtype)
        return (out * mask.unsqueeze(-1)).sum(1) / steps.to(out.dtype).unsqueeze(-1), state

    def step(self, x_t: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        if self.config.head == "mean":
            raise ValueError("SpikingModel: step() supports the 'last' and per-step heads")
        return self.net.step(x_t, state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _Bare(nn.Module):
    """A unit used without norm, residual or MLP (the "direct" architecture)."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> NamedTuple:
        return self.unit.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, state: Any = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        return self.unit(x, state, lengths=lengths)

    def step(self, x_t: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return self.unit.step(x_t, state)


__all__ = ["Network", "NetworkState", "SpikingModel"]
