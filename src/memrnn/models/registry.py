"""Named model configurations: one registry read by the CLI, the tests and the demo.

Every unit registered in `memrnn.units.UNITS` gets a `<unit>-small` variant automatically
(2 blocks of width 64); explicit variants below override those defaults or add other
architectures. A variant is listed only when the units it needs are registered.

The MRU variants (BMRU, CMRU, αCMRU and the networks holding them) are built with the
`MRU_NETWORK` recipe of the MRU papers' lab, because a plain block stack leaves a BMRU at
chance on classification: its write gate sees only the current input, so a first layer cannot
tell one step from another. What was measured (experiments/results/digits-probe, digits,
1000 steps, seed 0, BMRU accuracy): plain blocks 0.114; a start-of-sequence flag 0.114;
16 sinusoidal channels 0.660; output gate + residual scale + causal conv k = 4 0.649; both
sinusoidal and block options 0.875 (CMRU at eps = 1: 0.897 sinusoidal, 0.914 with both).
The default positional code is the start-of-sequence flag, the one that keeps the flip-flop
horizon (experiments/results/flip-flop-positional, trained at T = 100, seed 0): with it the
BMRU and the CMRU annealed to a BMRU make no error at T = 100, 1k, 10k and 100k, while with
the sinusoidal code, whose values past step 100 were never seen in training, both make errors:
the annealed CMRU from T = 1k on (accuracy 0.999996, 0.99994, 0.99998 at 1k, 10k, 100k), the
BMRU at 100k (0.99998).
Classification configs that run at one fixed length ask for `positional: sinusoidal`
and a kernel-8 convolution themselves (experiments/configs/digits-positional.yaml; kernel 8
raised the CMRU from 0.950 to 0.978 on digits in a seed-0 probe, digits-kernel-probe): with
them, 3 seeds, 3000 steps, the BMRU reaches 0.922 and the CMRU 0.967 on digits, against 0.971
for the LRU given the same recipe. The other units (LRU, minGRU, GRU, ...) keep plain blocks
by default, so that a baseline is the network its paper describes: they reach 0.84-0.98 on
digits without the recipe and 0.958-0.971 with it (3 seeds: minGRU 0.835 -> 0.964, GRU
0.943 -> 0.971, BRC 0.867 -> 0.964; the LRU 0.980 -> 0.971); ask for it with
`positional`, `output_gate`, `residual_scale` and `conv_kernel`.

    >>> model = create_model("bmru-small", input_size=1, output_size=10)
    >>> "bmru-small" in list_models()
    True
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import memrnn.units
from memrnn.models.config import ModelConfig, field_names
from memrnn.models.network import Network, SpikingModel

SMALL: dict[str, Any] = {"d_model": 64, "n_layers": 2}
# The MRU network recipe (see the module docstring for the measurements behind it).
MRU_NETWORK: dict[str, Any] = {
    "positional": "start",
    "output_gate": True,
    "residual_scale": True,
    "conv_kernel": 4,
}
# The plain pre-norm block stack: what every model was before MRU_NETWORK; experiment configs
# whose committed tables used it pin it with these ModelConfig values.
PLAIN_NETWORK: dict[str, Any] = {
    "positional": "none",
    "output_gate": False,
    "residual_scale": False,
    "conv_kernel": 0,
}


@dataclass(frozen=True)
class ModelVariant:
    """description: one line for `memrnn list`; requires: unit names (or "spiking") that must
    be available; defaults: ModelConfig fields."""

    description: str
    requires: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, ModelVariant] = {}


def register_model(name: str, description: str, requires: tuple[str, ...], **defaults: Any) -> None:
    unknown = sorted(set(defaults) - set(field_names()))
    if unknown:
        raise ValueError(f"register_model({name!r}): unknown ModelConfig field(s) {unknown}")
    VARIANTS[name] = ModelVariant(description, tuple(requires), dict(defaults))


register_model(
    "bmru-small",
    "2 x 64 BMRU blocks (bistable memory recurrent unit), MRU network recipe",
    ("bmru",),
    unit="bmru",
    **SMALL,
    **MRU_NETWORK,
)
register_model(
    "cmru-small",
    "2 x 64 CMRU blocks (cumulative MRU, eps = 1: the follow-up paper's CMRU; anneal to a "
    "BMRU with --epsilon-schedule), MRU network recipe",
    ("cmru",),
    unit="cmru",
    **SMALL,
    **MRU_NETWORK,
)
register_model(
    "acmru-small",
    "2 x 64 αCMRU blocks (input-dependent write sizes; our reconstruction), MRU network recipe",
    ("acmru",),
    unit="acmru",
    **SMALL,
    **MRU_NETWORK,
)
register_model(
    "lru-small",
    "2 x 64 LRU blocks (linear recurrent unit, fading memory)",
    ("lru",),
    unit="lru",
    **SMALL,
)
register_model("mingru-small", "2 x 64 minGRU blocks", ("mingru",), unit="mingru", **SMALL)
register_model(
    "hybrid-small",
    "2 x 64 blocks each running a BMRU and an LRU side by side, MRU network recipe",
    ("hybrid",),
    unit="hybrid",
    unit_kwargs={"mru": "bmru", "ssm": "lru"},
    **SMALL,
    **MRU_NETWORK,
)
register_model(
    "bmru-lru-alt-small",
    "2 x 64 blocks alternating BMRU and LRU layers, MRU network recipe",
    ("bmru", "lru"),
    unit=["bmru", "lru"],
    **SMALL,
    **MRU_NETWORK,
)
register_model(
    "gru-small", "2 x 64 GRU blocks (sequential baseline)", ("gru",), unit="gru", **SMALL
)
# The Transformer baseline: pre-norm blocks of 4-head causal attention with rotary positions
# and the GLU-MLP (no positional code, no block options: the rotary positions are its code).
register_model(
    "transformer-small",
    "2 x 64 Transformer blocks (4-head causal attention, rotary positions; the key/value "
    "cache grows with every step)",
    ("transformer",),
    unit="transformer",
    unit_kwargs={"n_heads": 4},
    **SMALL,
)
TRANSFORMER_WINDOW = 64
register_model(
    "transformer-window-small",
    f"2 x 64 Transformer blocks with sliding-window attention over the last "
    f"{TRANSFORMER_WINDOW} steps (a cache of fixed size)",
    ("transformer",),
    unit="transformer",
    unit_kwargs={"n_heads": 4, "window": TRANSFORMER_WINDOW},
    **SMALL,
)
register_model(
    "lstm-small", "2 x 64 LSTM blocks (sequential baseline)", ("lstm",), unit="lstm", **SMALL
)
register_model(
    "brc-small",
    "2 x 64 BRC blocks (bistable recurrent cell, sequential)",
    ("brc",),
    unit="brc",
    **SMALL,
)
register_model(
    "nbrc-small",
    "2 x 64 nBRC blocks (neuromodulated BRC, sequential)",
    ("nbrc",),
    unit="nbrc",
    **SMALL,
)
# Chilkuri & Eliasmith (ICML 2021), psMNIST: order 468, 346 hidden units, theta = 784
# (docs/units/lmu.md).
register_model(
    "lmu-psmnist",
    "parallel LMU psMNIST classifier (order 468, hidden 346, theta 784) with a linear readout",
    ("plmu",),
    arch="direct",
    unit="plmu",
    hidden_size=346,
    unit_kwargs={"order": 468, "theta": 784.0},
)
register_model(
    "src-mnist",
    "spiking recurrent cell network for spike-encoded MNIST",
    ("spiking",),
    arch="spiking",
    spiking={"hidden_sizes": [128, 128]},
)
register_model(
    "src-digits",
    "spiking recurrent cell network for spike-encoded 8x8 digits",
    ("spiking",),
    arch="spiking",
    spiking={"hidden_sizes": [64, 64]},
)


def _spiking_available() -> bool:
    try:
        import memrnn.models.spiking  # noqa: F401
    except ImportError:
        return False
    return True


def _available(variant: ModelVariant) -> bool:
    for need in variant.requires:
        if need == "spiking":
            if not _spiking_available():
                return False
        elif need not in memrnn.units.UNITS:
            return False
    return True


def _variants() -> dict[str, ModelVariant]:
    """Available explicit variants plus an automatic `<unit>-small` for every unit."""
    found: dict[str, ModelVariant] = {}
    for unit in sorted(memrnn.units.UNITS):
        found[f"{unit}-small"] = ModelVariant(
            f"2 x 64 blocks of the {unit!r} unit", (unit,), {"unit": unit, **SMALL}
        )
    found.update({k: v for k, v in VARIANTS.items() if _available(v)})
    return dict(sorted(found.items()))


def list_models() -> list[str]:
    """Names of the models whose units are available."""
    return list(_variants())


def describe_models() -> dict[str, str]:
    """name -> one-line description."""
    return {name: v.description for name, v in _variants().items()}


def unknown_model_error(name: str) -> ValueError:
    names = list_models()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    missing = " (its units are not available)" if name in VARIANTS else ""
    return ValueError(f"unknown model {name!r}{missing}.{hint} Available: {', '.join(names)}")


def head_for_task(task: Any) -> str:
    """The head a task needs, from its `target` and `input_kind`."""
    if task.target == "last":
        return "last"
    if getattr(task, "input_kind", "real") == "tokens" and task.loss_kind == "cross_entropy":
        return "next-token"
    return "sequence"


# LMU units need an order and a window theta. The window must match the task (theta = the
# sequence length unless given: a 16-step window on a 784-step task forgets all but the end),
# so it is filled from `seq_len` here, never from the registry's small test values.
LMU_UNITS = ("plmu", "lmu")
LMU_DEFAULT_ORDER = 8


def _fill_lmu_kwargs(config: ModelConfig, seq_len: int | None) -> ModelConfig:
    """Gives each LMU layer without `order`/`theta` the default order and theta = seq_len."""
    layer_kwargs = dict(config.layer_unit_kwargs)
    for unit in sorted(set(config.layer_units()) & set(LMU_UNITS)):
        given = config.kwargs_for(unit)
        extra: dict[str, Any] = {}
        if "order" not in given:
            extra["order"] = LMU_DEFAULT_ORDER
        if "theta" not in given and seq_len is not None:
            extra["theta"] = float(seq_len)
        if extra:
            layer_kwargs[unit] = {**layer_kwargs.get(unit, {}), **extra}
    return config.replace(layer_unit_kwargs=layer_kwargs)


def model_config(
    name: str, input_size: int, output_size: int, seq_len: int | None = None, **overrides: Any
) -> ModelConfig:
    """The ModelConfig of variant `name` for these sizes, with ModelConfig field overrides.

    `unit_kwargs` and `spiking` overrides are merged into the variant's dicts. `seq_len` (the
    task's sequence length) sets the window theta of LMU layers that are not given one.
    """
    variants = _variants()
    if name not in variants:
        raise unknown_model_error(name)
    unknown = sorted(set(overrides) - set(field_names()))
    if unknown:
        hints = [
            f"{k!r} (did you mean {difflib.get_close_matches(k, field_names(), n=1)[0]!r}?)"
            if difflib.get_close_matches(k, field_names(), n=1)
            else repr(k)
            for k in unknown
        ]
        raise ValueError(f"unknown model option(s) {', '.join(hints)}; options: {field_names()}")
    base = dict(variants[name].defaults)
    for key in ("unit_kwargs", "spiking", "layer_unit_kwargs"):
        if key in overrides and key in base:
            overrides[key] = {**base[key], **(overrides[key] or {})}
    config = ModelConfig(
        input_size=input_size, output_size=output_size, name=name, **{**base, **overrides}
    )
    return _fill_lmu_kwargs(config, seq_len)


def build_model(config: ModelConfig) -> nn.Module:
    """Builds the model a ModelConfig describes (the way checkpoints are reloaded)."""
    model = SpikingModel(config) if config.arch == "spiking" else Network(config)
    if config.epsilon is not None:
        set_epsilon(model, config.epsilon)
    return model


def set_epsilon(model: nn.Module, value: float) -> None:
    """Sets ε on every ε-family unit of `model` (no-op without the MRU units)."""
    try:
        from memrnn.units.mru import epsilon_units
    except ImportError:
        return
    for unit in epsilon_units(model):
        unit.epsilon = value


def current_epsilon(model: nn.Module) -> float | None:
    """ε of the first ε-family unit of `model`, or None when it has none."""
    try:
        from memrnn.units.mru import epsilon_units
    except ImportError:
        return None
    units = epsilon_units(model)
    return float(units[0].epsilon) if units else None


# The window of LMU layers built by `create_model`, which knows no task length.
LMU_DEFAULT_THETA = 64


def create_model(name: str, input_size: int, output_size: int, **overrides: Any) -> nn.Module:
    """Builds variant `name`; `overrides` are ModelConfig fields (head, d_model, dropout, ...).

    LMU layers given no window get theta = `seq_len` (an override) or LMU_DEFAULT_THETA
    steps (`config_for_task` takes the task's length)."""
    seq_len = overrides.pop("seq_len", None) or LMU_DEFAULT_THETA
    return build_model(model_config(name, input_size, output_size, seq_len=seq_len, **overrides))


def config_for_task(name: str, task: Any, **overrides: Any) -> ModelConfig:
    """The ModelConfig of `name` sized for `task`, with the head its target needs."""
    overrides.setdefault("head", head_for_task(task))
    overrides.setdefault("input_kind", getattr(task, "input_kind", "real"))
    seq_len = getattr(task, "seq_len", None)
    return model_config(name, task.input_size, task.output_size, seq_len=seq_len, **overrides)


def create_model_for_task(name: str, task: Any, **overrides: Any) -> nn.Module:
    return build_model(config_for_task(name, task, **overrides))


__all__ = [
    "MRU_NETWORK",
    "PLAIN_NETWORK",
    "VARIANTS",
    "ModelVariant",
    "build_model",
    "config_for_task",
    "create_model",
    "current_epsilon",
    "create_model_for_task",
    "describe_models",
    "head_for_task",
    "list_models",
    "model_config",
    "register_model",
    "set_epsilon",
]
