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
import math
import re
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
    early_stop: stop after this many evaluations in a row without an improvement of the
        task's primary metric on the val split (0: never; needs eval_every > 0). `best`
        holds the best checkpoint; a resumed run keeps the count.
    ckpt_every: also checkpoint `last` (without evaluating) every this many steps (0: never).
    eval_samples: samples per evaluation.
    eval_batch_size: batch size of evaluations.
    log_every: write a train row to metrics.csv every this many steps.
    seed: seeds torch, numpy, random and the task's batch generator.
    schedule_steps: length of the warm-up + cosine learning-rate schedule (None: `steps`).
        Fixed when a run starts and kept on --resume, so that a resumed run with a larger
        --steps continues at the final rate min_lr_ratio * lr instead of re-stretching the
        cosine (a learning-rate jump).
    epsilon_schedule: "HOLD,DECAY" steps for ε-units (ε = 1 held, then linearly to 0), or
        "HOLD,DECAY,START,END" (see memrnn.train.schedules).
    sharpness_schedule: "HOLD,DECAY,START,END" ramp of the surrogate sharpness of the units
        that have one (MRU family).
    write_penalty: λ of the write-rate penalty λ·(mean z)² of MRU units.
    device: "cpu", "cuda", ... ("auto": cuda when available). Under torchrun each process
        takes the GPU of its local rank.
    dtype: parameter dtype, "float32" or "float64" (e.g. for exact equivalence checks).
    precision: "fp32"; "bf16" (CUDA only): autocast to bfloat16 around the model, the units'
        projections included, with their recurrences (gates, decays, scans) in float32; or
        "tf32" (CUDA only): float32 with TF32 tensor-core matmuls and convolutions
        (torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32, for the run).
    backend: the backend of every recurrent unit's op ("auto", "naive", "torch", "numba",
        "triton"; see `memrnn.ops.dispatch`).
    skip_nonfinite_grads: skip (and count) optimiser steps whose loss or gradients are not
        finite, instead of stopping the run.
    debug_nan_at_step: testing aid: make the gradients of this step NaN.
    resume: continue from `out`/last. Only the keys in RESUME_MAY_CHANGE may differ from the
        run's config.yaml; a change of model, task or optimisation settings is refused.
    overwrite: start afresh in a non-empty `out`, deleting the files its run-file list
        (run-files.json) names: what an earlier run wrote there; every other file is kept,
        and a kept file in the way of the new run is an error, never deleted. A folder that
        holds only a run stopped before its first checkpoint needs no --overwrite.
    progress: show progress: a bar on a terminal, otherwise one line on stderr about every
        twentieth of the run (and at its end).
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
    early_stop: int = 0
    ckpt_every: int = 0
    eval_samples: int = 512
    eval_batch_size: int = 128
    log_every: int = 10
    seed: int = 0
    schedule_steps: int | None = None
    epsilon_schedule: str | None = None
    sharpness_schedule: str | None = None
    write_penalty: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    precision: str = "fp32"
    backend: str = "auto"
    skip_nonfinite_grads: bool = False
    debug_nan_at_step: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise TypeError from None
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
            parsed = value
            if from_text and isinstance(value, str):
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise UsageError(
                        f"--{key} {value!r} is not a value (a number, a word, [a, list] or "
                        "{a: mapping})"
                    ) from None
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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UsageError(
            f"config file {str(path)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        line = " ".join(str(err).split())
        raise UsageError(f"config file {str(path)!r} is not valid YAML: {line}") from None
    except OSError as err:
        raise UsageError(f"config file {str(path)!r} cannot be read ({err.strerror})") from None
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
    for key in ("warmup", "eval_every", "ckpt_every", "seed", "early_stop"):
        if getattr(c, key) < 0:
            raise UsageError(f"config key {key!r} must be >= 0, got {getattr(c, key)!r}")
    if c.seq_len is not None and c.seq_len < 1:
        raise UsageError(f"config key 'seq_len' must be >= 1, got {c.seq_len!r}")
    if c.stop_at is not None and c.stop_at < 1:
        raise UsageError(f"config key 'stop_at' must be >= 1, got {c.stop_at!r}")
    if c.time_limit is not None and c.time_limit <= 0:
        raise UsageError(f"config key 'time_limit' must be > 0 seconds, got {c.time_limit!r}")
    if c.schedule_steps is not None and c.schedule_steps < 1:
        raise UsageError(f"config key 'schedule_steps' must be >= 1, got {c.schedule_steps!r}")
    if c.debug_nan_at_step is not None and c.debug_nan_at_step < 1:
        raise UsageError(
            f"config key 'debug_nan_at_step' must be >= 1, got {c.debug_nan_at_step!r}"
        )
    _check_number("lr", c.lr, low=0.0, low_open=True)
    _check_number("weight_decay", c.weight_decay, low=0.0)
    _check_number("grad_clip", c.grad_clip, low=0.0)
    _check_number("write_penalty", c.write_penalty, low=0.0)
    _check_number("min_lr_ratio", c.min_lr_ratio, low=0.0, high=1.0)
    if c.time_limit is not None:
        _check_number("time_limit", c.time_limit, low=0.0, low_open=True)
    if len(c.betas) != 2:
        raise UsageError(f"config key 'betas' expects two numbers, got {c.betas!r}")
    for beta in c.betas:
        if not (isinstance(beta, int | float) and math.isfinite(beta) and 0.0 <= beta < 1.0):
            raise UsageError(
                f"config key 'betas' expects two numbers in [0, 1) (e.g. [0.9, 0.999]), "
                f"got {c.betas!r}"
            )
    if not c.out.strip():
        raise UsageError("config key 'out' is empty; give the run folder, e.g. --out runs/x")
    if c.early_stop > 0 and c.eval_every == 0:
        raise UsageError(
            f"--early-stop {c.early_stop} counts evaluations; give --eval-every N as well"
        )
    if c.resume and c.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it; give one")
    from memrnn.train.schedules import SCHEDULED, parse_ramp

    for key in SCHEDULED:
        if getattr(c, key):
            try:
                parse_ramp(key, getattr(c, key))
            except ValueError as err:
                raise UsageError(str(err)) from None
    for key, choices in (("dtype", DTYPES), ("precision", PRECISIONS), ("backend", BACKENDS)):
        if getattr(c, key) not in choices:
            raise UsageError(
                f"config key {key!r} must be one of {', '.join(choices)}, got {getattr(c, key)!r}"
            )
    if c.precision == "bf16" and c.dtype != "float32":
        raise UsageError(
            "--precision bf16 runs float32 parameters under autocast; drop --dtype float64"
        )
    for key, limit in (
        ("steps", MAX_COUNT),
        ("stop_at", MAX_COUNT),
        ("schedule_steps", MAX_COUNT),
        ("warmup", MAX_COUNT),
        ("eval_every", MAX_COUNT),
        ("ckpt_every", MAX_COUNT),
        ("log_every", MAX_COUNT),
        ("debug_nan_at_step", MAX_COUNT),
        ("batch_size", MAX_BATCH),
        ("grad_accum", MAX_BATCH),
        ("eval_batch_size", MAX_BATCH),
        ("eval_samples", MAX_COUNT),
        ("seq_len", MAX_SEQ_LEN),
        ("seed", MAX_SEED),
    ):
        value = getattr(c, key)
        if value is not None and value > limit:
            raise UsageError(f"config key {key!r} must be <= {limit}, got {value!r}")
    device = c.device.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", device):
        raise UsageError(
            f"config key 'device' must be cpu, cuda, cuda:N or auto, got {c.device!r} "
            "(this library runs on CPUs and CUDA GPUs)"
        )
    if c.backend == "triton" and not _cuda_device(device):
        raise UsageError(
            f"--backend triton runs on CUDA GPUs only; with --device {c.device} use "
            "auto, torch, naive or numba"
        )
    if c.batch_size % c.grad_accum:
        raise UsageError(
            f"batch_size {c.batch_size} does not split into grad_accum "
            f"{c.grad_accum} equal micro-batches"
        )


def _cuda_device(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _check_number(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """UsageError unless `value` is finite and within [low, high] ((low, high] if low_open)."""
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if high is not None:
            expected = f"a number in [{low:g}, {high:g}]"
        else:
            expected = f"a finite number {'>' if low_open else '>='} {low:g}"
        raise UsageError(f"config key {key!r} must be {expected}, got {value!r}")


# Keys that a resumed run may set differently from its config.yaml: how long and how often,
# where and how fast, never what is trained (model, task, data) or how it is optimised.
RESUME_MAY_CHANGE = frozenset(
    {
        "out",
        "steps",
        "stop_at",
        "time_limit",
        "eval_every",
        "early_stop",
        "ckpt_every",
        "eval_samples",
        "eval_batch_size",
        "log_every",
        "grad_accum",
        "device",
        "precision",
        "skip_nonfinite_grads",
        "debug_nan_at_step",
        "resume",
        "overwrite",
        "progress",
        "tensorboard",
    }
)


def resume_differences(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """ "key: saved -> new" for every key outside RESUME_MAY_CHANGE that differs."""
    old_values, new_values = saved.to_dict(), new.to_dict()
    return [
        f"{key}: {old_values[key]!r} -> {new_values[key]!r}"
        for key in FIELDS
        if key not in RESUME_MAY_CHANGE and old_values[key] != new_values[key]
    ]


DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16", "tf32")

# Upper bounds of the sizes a model config may ask for: far above any model this library
# trains on one machine, far below what would exhaust its memory while being built.
MODEL_LIMITS = {
    "d_model": 8192,
    "hidden_size": 8192,
    "n_layers": 512,
    "input_size": 1_000_000,
    "output_size": 1_000_000,
    "positional_size": 4096,
    "positional_max_len": 1_000_000,
    "conv_kernel": 4096,
}
MAX_MLP_RATIO = 64.0
MAX_PARAMETERS = 2_000_000_000
# Bounds of integer settings and seeds: a seed is an unsigned 64-bit value (torch's
# generators take no more); sizes and counts stay within what a tensor index holds.
MAX_SEED = 2**64 - 1
MAX_COUNT = 2**31 - 1
MAX_BATCH = 1 << 20
MAX_SEQ_LEN = 1 << 24


def check_model_size(config: Any) -> None:
    """ValueError naming the first size of a ModelConfig beyond MODEL_LIMITS, or a model of
    more than MAX_PARAMETERS parameters (a rough upper estimate, before anything is built)."""
    for key, limit in MODEL_LIMITS.items():
        value = getattr(config, key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value > limit:
            raise ValueError(f"ModelConfig: `{key}` must be an int <= {limit}, got {value!r}")
    ratio = getattr(config, "mlp_ratio", 1.0)
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not 0 < ratio <= MAX_MLP_RATIO
    ):
        raise ValueError(
            f"ModelConfig: `mlp_ratio` must be in (0, {MAX_MLP_RATIO:g}], got {ratio!r}"
        )
    d, n = config.d_model, config.n_layers
    h = config.hidden_size or d
    estimate = (
        n * (8 * d * h + 3 * int(ratio * d) * d) + (config.input_size + config.output_size) * d
    )
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"ModelConfig: {n} layers of width {d} (state {h}) make about {estimate:.3g} "
            f"parameters, more than {MAX_PARAMETERS:.3g}; choose smaller sizes"
        )


__all__ = [
    "DTYPES",
    "FIELDS",
    "PRECISIONS",
    "RESUME_MAY_CHANGE",
    "TrainConfig",
    "MAX_COUNT",
    "MAX_SEED",
    "MODEL_LIMITS",
    "TrainingDiverged",
    "UsageError",
    "check_model_size",
    "coerce",
    "load_yaml",
    "resume_differences",
    "resolve_config",
]
