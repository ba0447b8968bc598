"""`TrainConfig`: the resolved configuration of a training run, and how it is resolved.

Precedence: dataclass defaults < YAML file (`--config run.yaml`) < command-line overrides.
Every key is checked against the dataclass: an unknown key is an error naming it and its
closest matches, a value of the wrong type an error naming the key, the expected type and
the value. Keys may be written with dashes or underscores (`seq-len` == `seq_len`).
`model.<field>` and `task.<arg>` keys go into `model_overrides` and `task_kwargs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memrnn.ops.dispatch import BACKENDS


class UsageError(Exception):
    """A mistake in how memrnn was called (config, names, paths); the CLI prints it on one
    line and exits with status 2."""


class TrainingDiverged(RuntimeError):
    """The training loss or gradients stopped being finite; `step` is where it happened. The
    CLI prints it on one line and exits with status 3."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class TrainConfig:
    """Args:
    model: registered model name (`memrnn list`).
    task: registered task name.
    out: run folder (checkpoints, config.yaml, metrics.csv).
    seq_len: training sequence length (the task's seq_len or train_len); None: task default.
    steps: optimiser steps in total.
    stop_at: end this invocation after this step, checkpointing (resume later with --resume).
    time_limit: end this invocation after this many seconds of training (None: no limit).
    batch_size: samples per optimiser step: the global batch, split evenly over the
        processes of a distributed run and then over `grad_accum` micro-batches.
    grad_accum: micro-batches per optimiser step (gradients accumulated, then one step).
    lr, weight_decay, betas: AdamW settings (no decay on norms, biases, marked parameters).
    warmup: linear warm-up steps, followed by a cosine decay to min_lr_ratio * lr.
    grad_clip: max global gradient norm (0 disables clipping).
    eval_every: evaluate (val split) and checkpoint every this many steps (0: only at the end).
    ckpt_every: also checkpoint `last` (without evaluating) every this many steps (0: never).
    eval_samples: samples per evaluation.
    eval_batch_size: batch size of evaluations.
    log_every: write a train row to metrics.csv every this many steps.
    seed: seeds torch, numpy, random and the task's batch generator.
    epsilon_schedule: "hold,decay" steps for ε-units (ε = 1 held, then linearly to 0).
    write_penalty: λ of the write-rate penalty λ·(mean z)² of MRU units.
    device: "cpu", "cuda", ... ("auto": cuda when available). Under torchrun each process
        takes the GPU of its local rank.
    dtype: parameter dtype, "float32" or "float64" (e.g. for exact equivalence checks).
    precision: "fp32", or "bf16" (CUDA only): autocast to bfloat16 around the model, with
        the recurrent units (their parameters and scans) kept in float32.
    backend: the backend of every recurrent unit's op ("auto", "naive", "torch", "numba",
        "triton"; see `memrnn.ops.dispatch`).
    skip_nonfinite_grads: skip (and count) optimiser steps whose loss or gradients are not
        finite, instead of stopping the run.
    debug_nan_at_step: testing aid: make the gradients of this step NaN.
    resume: continue from `out`/last.
    progress: show a progress bar.
    tensorboard: also log to TensorBoard when it is installed.
    model_overrides: ModelConfig fields (e.g. {d_model: 128}).
    task_kwargs: task constructor arguments.
    """

    model: str = "bmru-small"
    task: str = "copy-first-input"
    out: str = "runs/default"
    seq_len: int | None = None
    steps: int = 1000
    stop_at: int | None = None
    time_limit: float | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 0
    ckpt_every: int = 0
    eval_samples: int = 512
    eval_batch_size: int = 128
    log_every: int = 10
    seed: int = 0
    epsilon_schedule: str | None = None
    write_penalty: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    precision: str = "fp32"
    backend: str = "auto"
    skip_nonfinite_grads: bool = False
    debug_nan_at_step: int | None = None
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def epsilon_steps(self) -> tuple[int, int] | None:
        """(hold, decay) from `epsilon_schedule`, or None."""
        if not self.epsilon_schedule:
            return None
        return parse_epsilon_schedule(self.epsilon_schedule)


def parse_epsilon_schedule(text: str) -> tuple[int, int]:
    parts = str(text).split(",")
    try:
        hold, decay = (int(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"epsilon_schedule must be 'HOLD,DECAY' (two step counts, e.g. 500,1000); got {text!r}"
        ) from None
    if hold < 0 or decay < 0:
        raise UsageError(f"epsilon_schedule steps must be >= 0; got {text!r}")
    return hold, decay


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return getattr(tp, "__name__", str(tp))


def _coerce_one(tp: Any, value: Any, from_text: bool) -> Any:
    """value as type tp, or raise TypeError. `from_text`: value is a command-line string."""
    if tp is type(None):
        if value is None or (from_text and str(value).lower() in ("none", "null", "~")):
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if from_text and str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(str(value))
            except ValueError:
                raise TypeError from None
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(str(value))
            except ValueError:
                raise TypeError from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        if from_text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, origin):
            raise TypeError
        if origin is list:
            (item,) = typing.get_args(tp) or (Any,)
            return value if item is Any else [_coerce_one(item, v, from_text) for v in value]
        return dict(value)
    raise TypeError


def coerce(key: str, value: Any, from_text: bool = False) -> Any:
    """Checks `value` against the type of TrainConfig field `key`; UsageError when it fails."""
    tp = typing.get_type_hints(TrainConfig)[key]
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = typing.get_args(tp) if is_union else (tp,)
    # None first so that "none" is not read as the string "none" for str | None fields.
    for option in sorted(options, key=lambda o: o is not type(None)):
        try:
            return _coerce_one(option, value, from_text)
        except (TypeError, ValueError):
            continue
    raise UsageError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


def normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def unknown_key_error(key: str) -> UsageError:
    close = difflib.get_close_matches(key, list(FIELDS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UsageError(
        f"unknown config key {key!r}{hint} (valid keys: {', '.join(FIELDS)}; "
        "model.<field> and task.<arg> set model and task options)"
    )


def apply(values: dict[str, Any], into: dict[str, Any], from_text: bool) -> None:
    """Checks `values` and writes them into the dict of TrainConfig fields `into`."""
    for raw_key, value in values.items():
        key = normalise_key(str(raw_key))
        prefix, dot, sub = key.partition(".")
        if dot and prefix in ("model", "task"):
            target = "model_overrides" if prefix == "model" else "task_kwargs"
            parsed = yaml.safe_load(value) if from_text and isinstance(value, str) else value
            into[target] = {**into.get(target, {}), sub: parsed}
            continue
        if key not in FIELDS:
            raise unknown_key_error(key)
        value = coerce(key, value, from_text)
        if key in ("model_overrides", "task_kwargs"):
            value = {**into.get(key, {}), **value}
        into[key] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist; check the --config path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = str(err).replace("\n", " ")
        raise UsageError(f"config file {str(path)!r} is not valid YAML: {line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def resolve_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    overrides_are_text: bool = True,
) -> TrainConfig:
    """Defaults < `base` (e.g. a saved run's config) < YAML `file` < `overrides`."""
    values: dict[str, Any] = {}
    if base:
        apply(base, values, from_text=False)
    if file is not None:
        apply(load_yaml(file), values, from_text=False)
    if overrides:
        apply(overrides, values, from_text=overrides_are_text)
    config = TrainConfig(**values)
    check_config(config)
    return config


def check_config(c: TrainConfig) -> None:
    for key in (
        "steps",
        "batch_size",
        "grad_accum",
        "eval_samples",
        "eval_batch_size",
        "log_every",
    ):
        if getattr(c, key) < 1:
            raise UsageError(f"config key {key!r} must be >= 1, got {getattr(c, key)!r}")
    for key in ("warmup", "eval_every", "ckpt_every", "seed"):
        if getattr(c, key) < 0:
            raise UsageError(f"config key {key!r} must be >= 0, got {getattr(c, key)!r}")
    if c.seq_len is not None and c.seq_len < 1:
        raise UsageError(f"config key 'seq_len' must be >= 1, got {c.seq_len!r}")
    if c.stop_at is not None and c.stop_at < 1:
        raise UsageError(f"config key 'stop_at' must be >= 1, got {c.stop_at!r}")
    if c.time_limit is not None and c.time_limit <= 0:
        raise UsageError(f"config key 'time_limit' must be > 0 seconds, got {c.time_limit!r}")
    if c.lr <= 0:
        raise UsageError(f"config key 'lr' must be > 0, got {c.lr!r}")
    if len(c.betas) != 2:
        raise UsageError(f"config key 'betas' expects two numbers, got {c.betas!r}")
    if c.epsilon_schedule:
        parse_epsilon_schedule(c.epsilon_schedule)
    for key, choices in (("dtype", DTYPES), ("precision", PRECISIONS), ("backend", BACKENDS)):
        if getattr(c, key) not in choices:
            raise UsageError(
                f"config key {key!r} must be one of {', '.join(choices)}, got {getattr(c, key)!r}"
            )
    if c.precision == "bf16" and c.dtype != "float32":
        raise UsageError(
            "--precision bf16 runs float32 parameters under autocast; drop --dtype float64"
        )
    if c.batch_size % c.grad_accum:
        raise UsageError(
            f"batch_size {c.batch_size} does not split into grad_accum "
            f"{c.grad_accum} equal micro-batches"
        )


DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16")


__all__ = [
    "DTYPES",
    "FIELDS",
    "PRECISIONS",
    "TrainConfig",
    "TrainingDiverged",
    "UsageError",
    "coerce",
    "load_yaml",
    "parse_epsilon_schedule",
    "resolve_config",
]
