"""`ModelConfig`: everything needed to rebuild a model, saved as JSON beside every checkpoint.

A config describes one of three architectures:
    "stack"   input encoder -> N pre-norm residual blocks -> final norm -> head (the default)
    "direct"  one unit applied to the raw input -> head (e.g. the parallel LMU classifier)
    "spiking" the spiking network of memrnn.models.spiking, built from `spiking` (a dict)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

ARCHS = ("stack", "direct", "spiking")
HEADS = ("last", "mean", "sequence", "next-token")
NORMS = ("layer", "rms")
INPUT_KINDS = ("real", "tokens")
POSITIONAL = ("none", "sinusoidal", "learned", "start")
POSITIONAL_AT = ("blocks", "encoder")


@dataclass
class ModelConfig:
    """Args:
    input_size: features per step (real inputs) or vocabulary size (token inputs).
    output_size: classes, regression targets or vocabulary size of the head.
    input_kind: "real" (linear encoder) or "tokens" (embedding).
    head: "last" (read at the last valid step), "mean" (masked mean over steps),
        "sequence" (one output per step) or "next-token" (per step, over the vocabulary).
    arch: "stack", "direct" or "spiking" (see the module docstring).
    unit: a registered unit name, or one name per layer (alternating kinds).
    unit_kwargs: extra constructor arguments of the unit (all layers), or one dict per
        layer name in `layer_unit_kwargs`.
    d_model: width of the residual stream.
    hidden_size: state width of each unit (default: d_model).
    n_layers: number of blocks.
    norm: "layer" (LayerNorm) or "rms" (RMSNorm).
    mlp: whether each block has a GLU-MLP after the unit.
    mlp_ratio: hidden width of the GLU-MLP as a multiple of d_model.
    dropout: dropout on both residual branches.
    spiking: the SpikingConfig fields for arch="spiking".
    epsilon: ε of every ε-family unit (BMRU, CMRU) after building; None keeps each unit's
        own value. Training with an ε schedule records the value reached here.
    positional: a code of the step index appended to the inputs (memrnn.models.positional):
        "none" (default), "sinusoidal", "learned" (a table of `positional_max_len` rows) or
        "start" (one channel, 1 at the first step).
    positional_size: channels of the sinusoidal and learned codes (default 16, even).
    positional_at: "blocks" (appended to every block's unit input, default) or "encoder"
        (appended to the network input only).
    positional_max_len: rows of the learned table; longer sequences raise a ValueError.
    output_gate: gate each unit's output with σ(W x̂ + b), b = 4 at start (stack only).
    residual_scale: a learned per-channel scale on each unit branch (stack only).
    conv_kernel: k of a causal depthwise convolution before each unit; 0 (default) is off.
    """

    input_size: int
    output_size: int
    input_kind: str = "real"
    head: str = "last"
    arch: str = "stack"
    unit: str | list[str] = "bmru"
    unit_kwargs: dict[str, Any] = field(default_factory=dict)
    layer_unit_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    d_model: int = 64
    hidden_size: int | None = None
    n_layers: int = 2
    norm: str = "layer"
    mlp: bool = True
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    spiking: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
    positional: str = "none"
    positional_size: int = 16
    positional_at: str = "blocks"
    positional_max_len: int = 4096
    output_gate: bool = False
    residual_scale: bool = False
    conv_kernel: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("arch", self.arch, ARCHS),
            ("head", self.head, HEADS),
            ("norm", self.norm, NORMS),
            ("input_kind", self.input_kind, INPUT_KINDS),
            ("positional", self.positional, POSITIONAL),
            ("positional_at", self.positional_at, POSITIONAL_AT),
        ):
            if value not in choices:
                raise ValueError(f"ModelConfig: unknown {key} {value!r}; expected one of {choices}")
        for key in ("output_gate", "residual_scale"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(
                    f"ModelConfig: `{key}` must be true or false, got {getattr(self, key)!r}"
                )
        k = self.conv_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"ModelConfig: `conv_kernel` must be an int >= 0, got {k!r}")
        size = self.positional_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size % 2:
            raise ValueError(
                f"ModelConfig: `positional_size` must be an even int >= 2, got {size!r}"
            )
        if self.arch != "stack":
            stack_only = {
                "positional": self.positional != "none",
                "output_gate": self.output_gate,
                "residual_scale": self.residual_scale,
                "conv_kernel": self.conv_kernel != 0,
            }
            for key, used in stack_only.items():
                if used:
                    raise ValueError(
                        f"ModelConfig: `{key}` is an option of arch='stack' blocks; "
                        f"arch={self.arch!r} does not take it"
                    )
        for key in ("input_size", "output_size", "d_model", "n_layers", "positional_max_len"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig: `{key}` must be a positive int, got {value!r}")
        if isinstance(self.unit, list | tuple):
            self.unit = list(self.unit)
            if not self.unit:
                raise ValueError(
                    "ModelConfig: `unit` is an empty list; give at least one unit name"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: `dropout` must be in [0, 1), got {self.dropout!r}")

    def layer_units(self) -> list[str]:
        """The unit name of each layer (a list of kinds repeats cyclically)."""
        kinds = self.unit if isinstance(self.unit, list) else [self.unit]
        return [kinds[i % len(kinds)] for i in range(self.n_layers)]

    def kwargs_for(self, unit: str) -> dict[str, Any]:
        """Constructor kwargs of `unit`: the shared ones updated by the per-name ones."""
        return {**self.unit_kwargs, **self.layer_unit_kwargs.get(unit, {})}

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; fields are {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; fields are {field_names()}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


__all__ = [
    "ARCHS",
    "HEADS",
    "INPUT_KINDS",
    "NORMS",
    "POSITIONAL",
    "POSITIONAL_AT",
    "ModelConfig",
    "field_names",
]
