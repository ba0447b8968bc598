"""The training loop: a task, a model from the registry, AdamW with warm-up + cosine, checkpoints.

    result = train(resolve_config(overrides={"model": "bmru-small", "task": "copy-first-input",
                                             "steps": "200", "out": "runs/x"}))

Each step draws a batch from the task's train split with a dedicated torch.Generator, so a
run is a pure function of its config. Every `eval_every` steps (and at the end) the val split
is evaluated, `last` is checkpointed and `best` replaced when the task's primary metric
improved. `resume=True` restores weights, optimiser, scheduler, step, and the RNG states of
torch, numpy, random and the batch generator: the resumed run ends with the same weights as
an uninterrupted one. A damaged `last` checkpoint is skipped for `prev`, with a warning.
A resume may change only the keys of `RESUME_MAY_CHANGE` (length, evaluation and checkpoint
cadence, device, logging); the learning-rate schedule keeps the length it was given when the
run started (`schedule_steps`), so a larger --steps continues at the final rate. The run
folder is guarded as memrnn.train.runfolder describes (lock, no silent overwrite).

`_train` runs four named steps: `_set_up` (checks, folder, model, optimiser, resume),
`_optimisation_step` (one step over the global batch, with the NaN policy),
`_evaluate_val` and `_checkpoint`; the ε/sharpness schedules live in memrnn.train.schedules.

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on GPU). Every rank draws the same global batch of `batch_size` samples from the
same generator and trains on its `rank_slice` of it, split into `grad_accum` micro-batches;
since DDP averages gradients, W processes take the same steps as one process with the same
global batch (exactly so when the task's loss is a plain mean over samples). Rank 0
evaluates, logs, shows the progress bar and writes checkpoints while the others wait.

A non-finite loss or gradient norm stops the run with `TrainingDiverged` naming the step,
before the optimiser touches the weights, so the last checkpoint stays good; with
`skip_nonfinite_grads` such steps are skipped instead and counted (the `skipped` column).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from memrnn.models.config import ModelConfig
from memrnn.models.registry import build_model, config_for_task
from memrnn.tasks.base import Task
from memrnn.train.checkpoint import (
    VOCAB,
    CheckpointError,
    CheckpointWriteError,
    find_good_checkpoint,
    load_training,
    load_weights,
    read_model_config,
    save_checkpoint,
)
from memrnn.train.config import (
    TrainConfig,
    TrainingDiverged,
    UsageError,
    check_model_size,
    resolve_config,
    resume_differences,
)
from memrnn.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    rank_slice,
    setup_distributed,
    shard_generator_seed,
    wrap_ddp,
)
from memrnn.train.logging import METRICS_CSV, MetricsLogger
from memrnn.train.runfolder import (
    CONFIG_YAML,
    RunFiles,
    RunLock,
    atomic_write_text,
    claim_new_run,
    claim_resumed_run,
    create_new,
    load_run_config,
    temporary_name,
)
from memrnn.train.schedules import UnitSchedules
from memrnn.units import is_no_weight_decay
from memrnn.units.base import set_backend


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_time: float
    best_metric: float | None
    val: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None
    task: Task | None = None
    skipped: int = 0
    rank: int = 0
    # The step at which early stopping ended the run (None: it was not stopped early).
    stopped_early: int | None = None


# -- building blocks ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    # The legacy global numpy RNG is what user code and libraries draw from when unseeded.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def flushing_denormals() -> bool:
    """Whether CPU float arithmetic flushes subnormal numbers to zero in this thread now."""
    subnormal = torch.tensor([1e-39], dtype=torch.float32)  # below float32's 1.18e-38
    return bool((subnormal * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """CPU float arithmetic flushes subnormal numbers to zero inside (`torch.set_flush_denormal`),
    and the previous setting is restored on exit.

    Subnormals (|x| < 1.18e-38 in float32, 2.2e-308 in float64) take a slow path in the CPU's
    floating-point unit, tens of times slower per operation. Training makes them without
    anyone asking: a gradient carried back through many decaying steps of a scan (h_t = a_t h_{t-1}
    + b_t with a_t < 1) shrinks geometrically into the subnormal range. For a 2 x 100 minGRU
    network with the causal convolution, at T = 600, batch 32, one thread (2-core Intel Xeon),
    a forward and backward pass took 4-24 s with subnormals and 0.8-1.2 s flushed, nearly all
    of the difference in the convolution's backward pass. Values that small change no weight,
    and the setting is deterministic, so runs stay reproducible and resume bit-exactly. The
    mode belongs to the calling thread (torch's intra-op worker threads keep their own); CPUs
    without the flush-to-zero modes run unchanged.
    """
    was_on = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def build_task(name: str, seq_len: int | None = None, /, **kwargs: Any) -> Task:
    """create_task with `seq_len` mapped to the task's length argument (seq_len or train_len).

    The length may also come in `kwargs` (a config's task arguments); both at once must agree.
    """
    from memrnn.tasks.registry import create_task, task_kwargs

    try:
        if seq_len is not None:
            valid = task_kwargs(name)
            key = next((k for k in ("seq_len", "train_len") if k in valid), None)
            if key is None:
                raise UsageError(f"task {name!r} has a fixed length; drop --seq-len")
            if key in kwargs and kwargs[key] != seq_len:
                raise UsageError(
                    f"--seq-len {seq_len} conflicts with --task.{key} {kwargs[key]}; give one"
                )
            kwargs = {**kwargs, key: seq_len}
        return create_task(name, **kwargs)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise UsageError(_one_line(err)) from None
    except (ValueError, TypeError) as err:
        message = _one_line(err)
        if "argument" in message:
            message += " (task arguments are set with --task.NAME VALUE)"
        raise UsageError(message) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, or marked recurrence parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or is_no_weight_decay(p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def penalty(model: nn.Module, lam: float) -> Tensor | None:
    if lam <= 0:
        return None
    from memrnn.units.mru import write_rate_penalty

    return write_rate_penalty(model, lam)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    split: str = "val",
    samples: int = 512,
    batch_size: int = 128,
    seq_len: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[float, dict[str, float]]:
    """(mean loss, mean metrics) over a fixed pass of `split`, weighted by batch size, with
    subnormals flushed (`flush_denormals`).
    `dtype`: cast real-valued inputs and targets to it (the model's parameter dtype)."""
    was_training = model.training
    model.eval()
    total, loss_sum, sums = 0, 0.0, {}
    try:
        with flush_denormals():
            for batch in task.iter_split(split, batch_size, max_samples=samples, seq_len=seq_len):
                batch = move_batch(batch, device, dtype)
                out, _ = model(batch.x, lengths=batch.lengths)
                n = batch.x.shape[0]
                loss_sum += float(task.loss(out, batch)) * n
                for k, v in task.metrics(out, batch).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                total += n
    finally:
        model.train(was_training)
    return loss_sum / max(total, 1), {k: v / max(total, 1) for k, v in sums.items()}


def move_batch(batch: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """The batch on `device`, its floating tensors cast to `dtype` when given."""

    def move(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    return type(batch)(*(move(t) for t in batch))


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state as tensors and plain values (checkpoints hold nothing else)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "random": random.getstate(),
        "batches": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    # Checkpoints of earlier versions hold numpy's own tuple.
    np.random.set_state(numpy_state)  # noqa: NPY002
    random.setstate(states["random"])
    generator.set_state(states["batches"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _is_better(value: float, best: float | None, higher: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if higher else value < best


def prepare_run_dir(out: str | Path) -> Path:
    """Creates `out` and checks that it can be written; UsageError otherwise."""
    if not str(out).strip():
        raise UsageError("the output folder is empty; give one, e.g. --out runs/x")
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A fresh name, created exclusively: the probe never opens an existing file or link.
        probe = temporary_name(run_dir / ".write-test")
        os.close(create_new(probe))
        probe.unlink()
    except OSError as err:
        raise UsageError(
            f"cannot write to output folder {str(run_dir)!r} ({err.strerror}); choose another --out"
        ) from None
    return run_dir


# -- the loop ----------------------------------------------------------------------------------
def _slice_batch(batch: Any, rows: slice) -> Any:
    return type(batch)(*(None if t is None else t[rows] for t in batch))


def _vocab_files(task: Task) -> dict[str, str]:
    """vocab.json for tasks with a token vocabulary (the text task), so prompts can be encoded."""
    vocab = getattr(task, "vocab", None)
    if isinstance(vocab, list | tuple) and all(isinstance(v, str) for v in vocab):
        return {VOCAB: json.dumps({"task": task.name, "tokens": list(vocab)})}
    return {}


def _mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    t = all_reduce_mean(t, info)
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _any_rank(flag: bool, info: DistInfo) -> bool:
    if not info.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def train(config: TrainConfig, echo: bool = False) -> TrainResult:
    """Runs (or resumes) the training run described by `config`; under torchrun, this
    process's share of it (see the module docstring)."""
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type != "cuda":
        raise UsageError(
            "--precision bf16 needs a CUDA device (bfloat16 autocast on CPU is slow and gains "
            "nothing here); use --precision fp32 on CPU"
        )
    if config.precision == "tf32" and device.type != "cuda":
        raise UsageError(
            "--precision tf32 needs a CUDA device (TF32 is a tensor-core format); use "
            "--precision fp32 on CPU"
        )
    world_size = _world_size_from_env()
    if world_size > 1:
        try:
            info = setup_distributed(device=device.type)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    else:
        info = DistInfo(device=device)
    # TF32: float32 matmuls and convolutions on tensor cores, with a 10-bit mantissa in the
    # products; the flags are process-wide, so they are restored when the run ends.
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if config.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    finished = False
    try:
        with flush_denormals():
            result = _train(config, echo, info)
        finished = True
        return result
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        if info.distributed:
            cleanup(wait=finished)


class _Progress:
    """A tqdm bar when stderr is a terminal; otherwise one plain line on stderr every
    `every` steps (about a twentieth of the run) and at the last step."""

    def __init__(self, desc: str, start: int, end: int, batch_size: int) -> None:
        self.desc, self.start, self.end, self.batch_size = desc, start, end, batch_size
        self.every = max(1, math.ceil(end / 20))
        self.bar = None
        self.metrics: dict[str, str] = {}
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=start, desc=desc, dynamic_ncols=True, leave=False)

    def update(
        self, step: int, loss: float, metrics: dict[str, float] | None, elapsed: float
    ) -> None:
        rate = self.batch_size * (step - self.start) / max(elapsed, 1e-9)
        if metrics is not None:
            self.metrics = {"loss": f"{loss:.4g}"}
            self.metrics.update({k: f"{v:.4g}" for k, v in metrics.items()})
            self.metrics["samples_s"] = f"{rate:.0f}"
            if self.bar is not None:
                self.bar.set_postfix(**self.metrics)
        if self.bar is not None:
            self.bar.update(1)
        elif step % self.every == 0 or step == self.end:
            shown = " ".join(f"{k}={v}" for k, v in self.metrics.items() if k != "loss")
            print(
                f"{self.desc}: step {step}/{self.end} loss={loss:.4g} {shown}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Run:
    """What `_set_up` builds for the loop, and the counters the loop advances."""

    config: TrainConfig
    info: DistInfo
    run_dir: Path
    task: Task
    model: nn.Module
    ddp_model: nn.Module
    model_config: ModelConfig
    dtype: torch.dtype
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    schedules: UnitSchedules
    rows: slice
    micro: int
    end: int
    extra_files: dict[str, str]
    logger: MetricsLogger | None = None
    progress: _Progress | None = None
    start: int = 0
    best: float | None = None
    elapsed: float = 0.0
    skipped: int = 0
    saved: tuple[Path, int] | None = None
    val: dict[str, float] = field(default_factory=dict)
    # Evaluations since the primary metric last improved (early stopping), and where the
    # run was stopped early.
    stale: int = 0
    best_step: int | None = None
    stopped_early: int | None = None


def _train(config: TrainConfig, echo: bool, info: DistInfo) -> TrainResult:
    with contextlib.ExitStack() as cleanup:
        run = _set_up(config, echo, info, cleanup)
        step = _loop(run)
    return TrainResult(
        run.run_dir,
        step,
        run.elapsed,
        run.best,
        run.val,
        run.model,
        run.task,
        run.skipped,
        info.rank,
        run.stopped_early,
    )


def _loop(run: _Run) -> int:
    """Optimisation steps from `run.start` to `run.end`, evaluating and checkpointing on the
    way; returns the last step taken. An interruption keeps what was last checkpointed."""
    config, info = run.config, run.info
    run.model.train()
    step = run.start
    if _early_stop_due(run):
        # A run stopped early and resumed with the same patience stays stopped.
        run.stopped_early = step
        return step
    validate = run.task.has_split("val")
    tick = time.perf_counter()
    for step in range(run.start + 1, run.end + 1):
        log_now = step % config.log_every == 0 or step == run.end
        loss, metrics, lr = _optimisation_step(run, step, log_now)
        if log_now:
            now = time.perf_counter()
            run.elapsed += now - tick
            tick = now
            if run.logger is not None:
                run.logger.log(step, "train", loss, metrics or {}, lr, run.elapsed)
        if run.progress is not None:
            run.progress.update(step, loss, metrics if log_now else None, run.elapsed)

        at_eval = config.eval_every > 0 and step % config.eval_every == 0
        at_ckpt = config.ckpt_every > 0 and step % config.ckpt_every == 0
        out_of_time = (
            config.time_limit is not None
            and run.elapsed + time.perf_counter() - tick >= config.time_limit
        )
        if config.time_limit is not None:
            # Rank 0's clock decides, so that every rank stops at the same step.
            out_of_time = _any_rank(out_of_time and info.is_main, info)
        if at_eval or at_ckpt or step == run.end or out_of_time:
            run.elapsed += time.perf_counter() - tick
            rng_ranks = _gather(_rng_states(run.generator), info)
            evaluated = validate and (at_eval or step == run.end or out_of_time)
            if info.is_main:
                improved = False
                if evaluated:
                    improved = _evaluate_val(run, step, lr)
                    run.stale = 0 if improved else run.stale + 1
                    if improved:
                        run.best_step = step
                _checkpoint(run, step, rng_ranks, improved)
            barrier()
            tick = time.perf_counter()
            if evaluated and config.early_stop > 0:
                # Rank 0 evaluated; every rank stops at the same step.
                if _any_rank(info.is_main and _early_stop_due(run), info):
                    run.stopped_early = step
                    break
        if out_of_time:
            break
    return step


def _early_stop_due(run: _Run) -> bool:
    """Whether `early_stop` evaluations in a row have not improved the primary metric."""
    return run.config.early_stop > 0 and run.stale >= run.config.early_stop


# -- set-up ------------------------------------------------------------------------------------
def _set_up(config: TrainConfig, echo: bool, info: DistInfo, cleanup: contextlib.ExitStack) -> _Run:
    """Checks everything that can be checked, then claims the run folder, builds the model,
    the optimiser and the schedules, and restores a checkpoint under `resume`. Nothing in
    the run folder changes before every check has passed."""
    device = info.device
    per_rank, remainder = divmod(config.batch_size, info.world_size * config.grad_accum)
    if remainder or per_rank < 1:
        raise UsageError(
            f"batch_size {config.batch_size} does not split evenly over {info.world_size} "
            f"process(es) x grad_accum {config.grad_accum}"
        )
    try:
        schedules = UnitSchedules.from_config(config)
    except ValueError as err:
        raise UsageError(_one_line(err)) from None
    run_dir = prepare_run_dir(config.out)
    seed_everything(config.seed)
    task = build_task(config.task, config.seq_len, **config.task_kwargs)
    if config.early_stop > 0 and not task.has_split("val"):
        raise UsageError(
            f"--early-stop {config.early_stop} watches the validation split, and this task has "
            "none (val_fraction 0); drop --early-stop or give a validation split"
        )
    # Saved with the run (config.yaml, checkpoints): e.g. a data file's path and checksum.
    config.task_kwargs = {**config.task_kwargs, **task.recorded_kwargs()}
    resume_folder = None
    if config.resume:
        resume_folder = _resume_folder(run_dir, info.is_main)
        config = _resumed_config(config, resume_folder)
    elif config.schedule_steps is None:
        # Recorded, so that a resume with a larger --steps keeps the schedule's length.
        config = dataclasses.replace(config, schedule_steps=config.steps)
    if config.resume:
        try:
            model_config = read_model_config(resume_folder)
        except CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
    else:
        try:
            model_config = config_for_task(config.model, task, **config.model_overrides)
            check_model_size(model_config)
        except (ValueError, TypeError) as err:
            raise UsageError(_one_line(err)) from None
        task_kind = getattr(task, "input_kind", "real")
        if model_config.input_kind != task_kind:
            raise UsageError(
                f"--model.input_kind {model_config.input_kind} does not fit task "
                f"{config.task!r}, whose inputs are {task_kind}; drop --model.input_kind"
            )
    dtype = getattr(torch, config.dtype)
    try:
        model = build_model(model_config).to(device=device, dtype=dtype)
        schedules.check(model)
    except (ValueError, TypeError) as err:
        raise UsageError(_one_line(err)) from None
    set_backend(model, config.backend)
    if info.distributed:
        # Same initial weights on every rank (above), but independent dropout masks.
        torch.manual_seed(shard_generator_seed(config.seed, info.rank))

    _claim_run_dir(run_dir, config, info, cleanup)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas)
    )
    horizon = config.schedule_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup, horizon, config.min_lr_ratio)
    )
    generator = torch.Generator().manual_seed(config.seed)
    run = _Run(
        config=config,
        info=info,
        run_dir=run_dir,
        task=task,
        model=model,
        ddp_model=model,
        model_config=model_config,
        dtype=dtype,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        schedules=schedules,
        rows=rank_slice(config.batch_size, info),
        micro=config.batch_size // info.world_size // config.grad_accum,
        end=config.steps if config.stop_at is None else min(config.steps, config.stop_at),
        extra_files={**_vocab_files(task), **task.checkpoint_files()},
    )
    if resume_folder is not None:
        _restore(run, resume_folder)
    # Under bf16 autocast every unit keeps its recurrence in float32 by itself
    # (memrnn.units.base); encoders, MLPs and heads run in bfloat16.
    run.ddp_model = wrap_ddp(model, info)
    if info.is_main:
        run.logger = _open_log(run_dir, run.start if config.resume else None, config.tensorboard)
        cleanup.callback(run.logger.close)
        # `overwrite` acted once, on this invocation; the folder records settings, not actions.
        text = dataclasses.replace(config, overwrite=False).to_yaml()
        RunFiles(run_dir).claim(CONFIG_YAML)
        atomic_write_text(run_dir / CONFIG_YAML, text)
        if echo:
            print(f"# resolved config ({run_dir / CONFIG_YAML})\n{text}", end="")
            n_params = sum(p.numel() for p in model.parameters())
            print(f"# model {config.model}: {n_params:,} parameters")
            if not task.has_split("val"):
                print(
                    "# no validation split (val_fraction 0): the run is not evaluated while "
                    "it trains and its last checkpoint is the result"
                )
        if config.progress:
            run.progress = _Progress(
                f"{config.model} on {config.task}", run.start, run.end, config.batch_size
            )
            cleanup.callback(run.progress.close)
    return run


def _resumed_config(config: TrainConfig, folder: Path) -> TrainConfig:
    """`config` checked against the settings the checkpoint in `folder` recorded (or, for a
    checkpoint without them, the run's config.yaml): UsageError naming every key that a
    resume may not change (RESUME_MAY_CHANGE); the saved schedule length when not given.
    An edited config.yaml is therefore refused like a changed option."""
    recorded = None
    try:
        recorded = load_training(folder).get("train_config")
    except CheckpointError:
        # Reported with its reason when the state is restored.
        recorded = None
    if isinstance(recorded, dict):
        try:
            saved = resolve_config(overrides=recorded, overrides_are_text=False)
        except UsageError as err:
            raise UsageError(
                f"--resume: checkpoint {str(folder)!r} records settings this version refuses "
                f"({err})"
            ) from None
    else:
        saved = resolve_config(overrides=load_run_config(config.out), overrides_are_text=False)
    saved = dataclasses.replace(saved, out=config.out, stop_at=None)
    if "sha256" not in saved.task_kwargs and "sha256" in config.task_kwargs:
        # Written before the task recorded its data's hash: the new record is no change.
        now = {k: config.task_kwargs.get(k) for k in ("sha256", "path", "data_dir")}
        now = {k: v for k, v in now.items() if v is not None}
        saved = dataclasses.replace(saved, task_kwargs={**saved.task_kwargs, **now})
    if config.schedule_steps is None:
        config = dataclasses.replace(config, schedule_steps=saved.schedule_steps or saved.steps)
    if saved.schedule_steps is None:
        # Written before the schedule length was recorded: it was that run's `steps`.
        saved = dataclasses.replace(saved, schedule_steps=config.schedule_steps)
    changed = resume_differences(saved, config)
    if changed:
        raise UsageError(
            f"--resume would change what the run in {config.out!r} trains ({'; '.join(changed)})"
            "; drop these options, or start a new run (another --out, or --overwrite)"
        )
    return config


def _resume_folder(run_dir: Path, main: bool) -> Path:
    try:
        folder, skipped_folders = find_good_checkpoint(run_dir, "last")
    except FileNotFoundError:
        raise UsageError(
            f"--resume: no checkpoint in {str(run_dir)!r}; start without --resume"
        ) from None
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    if main:
        for message in skipped_folders:
            print(f"memrnn: warning: {message}; resuming from {folder} instead", file=sys.stderr)
    return folder


def _claim_run_dir(
    run_dir: Path, config: TrainConfig, info: DistInfo, cleanup: contextlib.ExitStack
) -> None:
    """Rank 0 locks the folder and, for a new run, refuses or clears a non-empty one; every
    rank raises the same UsageError when that fails."""
    error = None
    if info.is_main:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
            cleanup.callback(lock.release)
            if config.resume:
                # Removes what a killed invocation was writing when it died (its own
                # temporaries, named in the run-file list), nothing else.
                claim_resumed_run(run_dir)
            else:
                kept = claim_new_run(run_dir, config.overwrite)
                if kept:
                    shown = ", ".join(kept[:6]) + (", ..." if len(kept) > 6 else "")
                    print(
                        f"memrnn: kept {len(kept)} file(s) in {str(run_dir)!r} that no run "
                        f"wrote: {shown}",
                        file=sys.stderr,
                    )
        except UsageError as err:
            error = str(err)
    error = _gather(error, info)[0]
    if error is not None:
        raise UsageError(error)


def _open_log(run_dir: Path, resume_step: int | None, tensorboard: bool) -> MetricsLogger:
    files = RunFiles(run_dir)
    files.claim(METRICS_CSV)
    board = run_dir / "tensorboard"
    if tensorboard and board.is_symlink():
        raise UsageError(
            f"{str(board)!r} is a symbolic link, and a run folder writes nothing through a "
            "link; move it away, or pass --tensorboard false"
        )
    if tensorboard and not board.exists():
        files.add(board.name)
    try:
        return MetricsLogger(run_dir, resume_step=resume_step, tensorboard=tensorboard)
    except (csv.Error, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"{str(run_dir / METRICS_CSV)!r} is damaged ({_one_line(err)[:200]}); restore it, "
            "or move it away to start a new log"
        ) from None


def _restore(run: _Run, folder: Path) -> None:
    """Weights, optimiser, scheduler, RNG states and counters from checkpoint `folder`."""
    info = run.info
    try:
        load_weights(run.model, folder, map_location=str(info.device))
        state = load_training(folder)
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        per_rank_rng = state.get("rng_ranks") or []
        if len(per_rank_rng) == info.world_size:
            rng = per_rank_rng[info.rank]
        _set_rng_states(rng, run.generator)
        step = int(state["step"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
        raise UsageError(
            f"--resume: checkpoint {str(folder)!r} has an unusable training state "
            f"({type(err).__name__}: {_one_line(err)[:200]})"
        ) from None
    if info.distributed and len(per_rank_rng) != info.world_size:
        # Resumed with another number of processes: fresh per-rank dropout streams.
        torch.manual_seed(shard_generator_seed(run.config.seed + step, info.rank))
    run.start, run.best = step, state.get("best")
    run.elapsed = state.get("train_time", 0.0)
    run.skipped = state.get("skipped", 0)
    run.stale = int(state.get("stale_evaluations") or 0)
    run.best_step = state.get("best_step")
    run.saved = (folder, step)


# -- one optimisation step ---------------------------------------------------------------------
def _optimisation_step(
    run: _Run, step: int, log_now: bool
) -> tuple[float, dict[str, float] | None, float]:
    """Optimisation step `step` (1-based) over one global batch: (loss, train metrics when
    `log_now`, learning rate used). A non-finite loss or gradient norm raises
    TrainingDiverged before the weights change, or skips the step (skip_nonfinite_grads)."""
    config, info, model = run.config, run.info, run.model
    bf16 = config.precision == "bf16"
    device = info.device
    run.schedules.apply(model, step - 1)
    # The global batch, the same on every rank; each keeps its own rows.
    batch = _slice_batch(run.task.batch(config.batch_size, "train", run.generator), run.rows)
    run.optimizer.zero_grad(set_to_none=True)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    metric_sums: dict[str, float] = {}
    micro = run.micro
    for i in range(config.grad_accum):
        part = move_batch(_slice_batch(batch, slice(i * micro, (i + 1) * micro)), device, run.dtype)
        last_micro = i == config.grad_accum - 1
        # Gradients are averaged over ranks once per step, on the last micro-batch.
        sync = (
            contextlib.nullcontext()
            if last_micro or not info.distributed
            else run.ddp_model.no_sync()
        )
        with sync:
            with autocast:
                out, _ = run.ddp_model(part.x, lengths=part.lengths)
            loss = run.task.loss(out.float() if bf16 else out, part)
            extra = penalty(model, config.write_penalty)
            total_loss = loss if extra is None else loss + extra
            if config.grad_accum > 1:
                total_loss = total_loss / config.grad_accum
            total_loss.backward()
        loss_sum += loss.detach().double()
        if log_now:
            detached = out.detach().float() if bf16 else out.detach()
            for k, v in run.task.metrics(detached, part).items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
    step_loss = all_reduce_mean(loss_sum / config.grad_accum, info)
    if config.debug_nan_at_step == step:
        first = next(p for p in model.parameters() if p.grad is not None)
        first.grad.fill_(float("nan"))
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    lr = run.optimizer.param_groups[0]["lr"]
    # One host sync per step; the values are the same on every rank (reduced above).
    finite = bool(torch.isfinite(step_loss) & torch.isfinite(norm))
    if finite:
        run.optimizer.step()
    elif config.skip_nonfinite_grads:
        run.skipped += 1
        run.optimizer.zero_grad(set_to_none=True)
    elif not math.isfinite(float(step_loss)):
        raise _diverged(run, step, "the training loss", float(step_loss), lr)
    else:
        raise _diverged(run, step, "the gradient norm", float(norm), lr)
    run.scheduler.step()
    metrics = None
    if log_now:
        metrics = _mean_over_ranks({k: v / config.grad_accum for k, v in metric_sums.items()}, info)
        if config.skip_nonfinite_grads:
            metrics["skipped"] = float(run.skipped)
    return float(step_loss), metrics, lr


def _diverged(run: _Run, step: int, what: str, value: float, lr: float) -> TrainingDiverged:
    if run.saved is None:
        kept = "no checkpoint had been written yet"
    else:
        kept = f"the last good checkpoint is {run.saved[0]} (step {run.saved[1]})"
    return TrainingDiverged(
        f"{what} is {value} at step {step} (lr {lr:.3g}); training stopped and {kept}. "
        "Lower --lr, add --grad-clip, or pass --skip-nonfinite-grads",
        step,
    )


# -- evaluation and checkpoints ----------------------------------------------------------------
def _evaluate_val(run: _Run, step: int, lr: float) -> bool:
    """Evaluates the val split, logs it; whether the primary metric improved on the best."""
    config = run.config
    val_loss, run.val = evaluate(
        run.model,
        run.task,
        "val",
        config.eval_samples,
        config.eval_batch_size,
        device=run.info.device,
        dtype=run.dtype,
    )
    if run.logger is not None:
        run.logger.log(step, "val", val_loss, run.val, lr, run.elapsed)
    value = run.val.get(run.task.primary_metric, float("nan"))
    improved = _is_better(value, run.best, run.task.higher_is_better)
    if improved:
        run.best = value
    return improved


def _checkpoint(run: _Run, step: int, rng_ranks: list[Any], improved: bool) -> None:
    """Writes `last` (and `best` when `improved`) for `step`."""
    # Scheduled unit attributes (ε, sharpness) are not weights: the config carries them.
    saved_config = run.schedules.record(run.model, run.model_config)
    state = _training_state(run, step, rng_ranks)
    try:
        folder = save_checkpoint(
            run.run_dir, "last", run.model, saved_config, state, run.extra_files
        )
        run.saved = (folder, step)
        if improved:
            save_checkpoint(run.run_dir, "best", run.model, saved_config, state, run.extra_files)
    except CheckpointWriteError as err:
        advice = "free space" if err.errno == errno.ENOSPC else "fix this"
        raise CheckpointWriteError(
            err.errno, f"step {step}: {err.strerror}; {advice} and continue with --resume"
        ) from None


def _training_state(run: _Run, step: int, rng_ranks: list[Any]) -> dict[str, Any]:
    task = run.task
    return {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks if run.info.distributed else None,
        "step": step,
        "best": run.best,
        "train_time": run.elapsed,
        "skipped": run.skipped,
        "stale_evaluations": run.stale,
        "best_step": run.best_step,
        "world_size": run.info.world_size,
        "val": run.val,
        "train_config": run.config.to_dict(),
        "task": {
            "name": task.name,
            "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better,
            "loss_kind": getattr(task, "loss_kind", None),
        },
    }


__all__ = [
    "CONFIG_YAML",
    "load_run_config",
    "prepare_run_dir",
    "TrainResult",
    "TrainingDiverged",
    "build_task",
    "evaluate",
    "load_run_config",
    "lr_factor",
    "param_groups",
    "seed_everything",
    "train",
]
