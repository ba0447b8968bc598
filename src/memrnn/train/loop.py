"""The training loop: a task, a model from the registry, AdamW with warm-up + cosine, checkpoints.

    result = train(resolve_config(overrides={"model": "bmru-small", "task": "copy-first-input",
                                             "steps": "200", "out": "runs/x"}))

Each step draws a batch from the task's train split with a dedicated torch.Generator, so a
run is a pure function of its config. Every `eval_every` steps (and at the end) the val split
is evaluated, `last` is checkpointed and `best` replaced when the task's primary metric
improved. `resume=True` restores weights, optimiser, scheduler, step, and the RNG states of
torch, numpy, random and the batch generator: the resumed run ends with the same weights as
an uninterrupted one. A damaged `last` checkpoint is skipped for `prev`, with a warning.

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
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from memrnn.models.registry import build_model, config_for_task, current_epsilon
from memrnn.tasks.base import Task
from memrnn.train.checkpoint import (
    VOCAB,
    CheckpointError,
    find_good_checkpoint,
    load_training,
    load_weights,
    read_model_config,
    save_checkpoint,
)
from memrnn.train.config import TrainConfig, TrainingDiverged, UsageError
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
from memrnn.train.logging import MetricsLogger
from memrnn.units import is_no_weight_decay

CONFIG_YAML = "config.yaml"


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


# -- building blocks ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    # The legacy global numpy RNG is what user code and libraries draw from when unseeded.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


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


def epsilon_schedule(config: TrainConfig) -> Any:
    steps = config.epsilon_steps()
    if steps is None:
        return None
    try:
        from memrnn.units.mru import EpsilonSchedule
    except ImportError:
        raise UsageError("--epsilon-schedule needs the MRU units (memrnn.units.mru)") from None
    return EpsilonSchedule(*steps)


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
    """(mean loss, mean metrics) over a fixed pass of `split`, weighted by batch size.
    `dtype`: cast real-valued inputs and targets to it (the model's parameter dtype)."""
    was_training = model.training
    model.eval()
    total, loss_sum, sums = 0, 0.0, {}
    try:
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
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "random": random.getstate(),
        "batches": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["random"])
    generator.set_state(states["batches"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _is_better(value: float, best: float | None, higher: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if higher else value < best


def prepare_run_dir(out: str | Path) -> Path:
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
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
    world_size = _world_size_from_env()
    if world_size > 1:
        try:
            info = setup_distributed(device=device.type)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    else:
        info = DistInfo(device=device)
    try:
        return _train(config, echo, info)
    finally:
        if info.distributed:
            cleanup()


def _train(config: TrainConfig, echo: bool, info: DistInfo) -> TrainResult:
    device = info.device
    main = info.is_main
    per_rank, remainder = divmod(config.batch_size, info.world_size * config.grad_accum)
    if remainder or per_rank < 1:
        raise UsageError(
            f"batch_size {config.batch_size} does not split evenly over {info.world_size} "
            f"process(es) x grad_accum {config.grad_accum}"
        )
    rows = rank_slice(config.batch_size, info)
    micro = config.batch_size // info.world_size // config.grad_accum
    dtype = getattr(torch, config.dtype)
    bf16 = config.precision == "bf16"

    run_dir = prepare_run_dir(config.out)
    seed_everything(config.seed)
    task = build_task(config.task, config.seq_len, **config.task_kwargs)
    # Saved with the run (config.yaml, checkpoints): e.g. a data file's path and checksum.
    config.task_kwargs = {**config.task_kwargs, **task.recorded_kwargs()}

    resume_folder = None
    if config.resume:
        try:
            resume_folder, skipped_folders = find_good_checkpoint(run_dir, "last")
        except FileNotFoundError:
            raise UsageError(
                f"--resume: no checkpoint in {str(run_dir)!r}; start without --resume"
            ) from None
        except CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
        if main:
            # Folders a killed run was writing when it died.
            for partial in run_dir.glob(".*.tmp-*"):
                shutil.rmtree(partial, ignore_errors=True)
            for message in skipped_folders:
                print(
                    f"memrnn: warning: {message}; resuming from {resume_folder} instead",
                    file=sys.stderr,
                )
        model_config = read_model_config(resume_folder)
    else:
        try:
            model_config = config_for_task(config.model, task, **config.model_overrides)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    model = build_model(model_config).to(device=device, dtype=dtype)
    if info.distributed:
        # Same initial weights on every rank (above), but independent dropout masks.
        torch.manual_seed(shard_generator_seed(config.seed, info.rank))

    if main:
        (run_dir / CONFIG_YAML).write_text(config.to_yaml())
        if echo:
            print(f"# resolved config ({run_dir / CONFIG_YAML})\n{config.to_yaml()}", end="")

    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup, config.steps, config.min_lr_ratio)
    )
    generator = torch.Generator().manual_seed(config.seed)
    eps = epsilon_schedule(config)
    start, best, elapsed, skipped = 0, None, 0.0, 0
    if resume_folder is not None:
        load_weights(model, resume_folder, map_location=str(device))
        state = load_training(resume_folder)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        per_rank_rng = state.get("rng_ranks") or []
        if len(per_rank_rng) == info.world_size:
            rng = per_rank_rng[info.rank]
        _set_rng_states(rng, generator)
        if info.distributed and len(per_rank_rng) != info.world_size:
            # Resumed with another number of processes: fresh per-rank dropout streams.
            torch.manual_seed(shard_generator_seed(config.seed + state["step"], info.rank))
        start, best, elapsed = state["step"], state.get("best"), state.get("train_time", 0.0)
        skipped = state.get("skipped", 0)
    # Under bf16 autocast every unit keeps its recurrence in float32 by itself
    # (memrnn.units.base); encoders, MLPs and heads run in bfloat16.
    ddp_model = wrap_ddp(model, info)

    logger = (
        MetricsLogger(run_dir, resume_step=start, tensorboard=config.tensorboard) if main else None
    )
    metric_name = task.primary_metric
    end = config.steps if config.stop_at is None else min(config.steps, config.stop_at)
    extra_files = _vocab_files(task)
    saved: tuple[Path, int] | None = None
    if resume_folder is not None:
        saved = (resume_folder, start)

    def training_state(step: int, val: dict[str, float], rng_ranks: list[Any]) -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks if info.distributed else None,
            "step": step,
            "best": best,
            "train_time": elapsed,
            "skipped": skipped,
            "world_size": info.world_size,
            "val": val,
            "train_config": config.to_dict(),
            "task": {
                "name": task.name,
                "primary_metric": metric_name,
                "higher_is_better": task.higher_is_better,
                "loss_kind": getattr(task, "loss_kind", None),
            },
        }

    def stop(step: int, what: str, value: float, lr: float) -> TrainingDiverged:
        if saved is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = f"the last good checkpoint is {saved[0]} (step {saved[1]})"
        return TrainingDiverged(
            f"{what} is {value} at step {step} (lr {lr:.3g}); training stopped and {kept}. "
            "Lower --lr, add --grad-clip, or pass --skip-nonfinite-grads",
            step,
        )

    bar = None
    if config.progress and main:
        from tqdm import tqdm

        bar = tqdm(
            total=end,
            initial=start,
            desc=f"{config.model} on {config.task}",
            dynamic_ncols=True,
            leave=False,
        )
    val: dict[str, float] = {}
    model.train()
    step = start
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    tick = time.perf_counter()
    try:
        for step in range(start + 1, end + 1):
            if eps is not None:
                eps.apply(model, step - 1)
            log_now = step % config.log_every == 0 or step == end
            # The global batch, the same on every rank; each keeps its own rows.
            batch = _slice_batch(task.batch(config.batch_size, "train", generator), rows)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            metric_sums: dict[str, float] = {}
            for i in range(config.grad_accum):
                part = move_batch(
                    _slice_batch(batch, slice(i * micro, (i + 1) * micro)), device, dtype
                )
                last_micro = i == config.grad_accum - 1
                # Gradients are averaged over ranks once per step, on the last micro-batch.
                sync = (
                    contextlib.nullcontext()
                    if last_micro or not info.distributed
                    else ddp_model.no_sync()
                )
                with sync:
                    with autocast:
                        out, _ = ddp_model(part.x, lengths=part.lengths)
                    loss = task.loss(out.float() if bf16 else out, part)
                    extra = penalty(model, config.write_penalty)
                    total_loss = loss if extra is None else loss + extra
                    if config.grad_accum > 1:
                        total_loss = total_loss / config.grad_accum
                    total_loss.backward()
                loss_sum += loss.detach().double()
                if log_now:
                    for k, v in task.metrics(
                        out.detach().float() if bf16 else out.detach(), part
                    ).items():
                        metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            step_loss = all_reduce_mean(loss_sum / config.grad_accum, info)
            if config.debug_nan_at_step == step:
                first = next(p for p in model.parameters() if p.grad is not None)
                first.grad.fill_(float("nan"))
            norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            lr = optimizer.param_groups[0]["lr"]
            # One host sync per step; the values are the same on every rank (reduced above).
            finite = bool(torch.isfinite(step_loss) & torch.isfinite(norm))
            if finite:
                optimizer.step()
            elif config.skip_nonfinite_grads:
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
            elif not math.isfinite(float(step_loss)):
                raise stop(step, "the training loss", float(step_loss), lr)
            else:
                raise stop(step, "the gradient norm", float(norm), lr)
            scheduler.step()

            if log_now:
                now = time.perf_counter()
                elapsed += now - tick
                tick = now
                metrics = _mean_over_ranks(
                    {k: v / config.grad_accum for k, v in metric_sums.items()}, info
                )
                if config.skip_nonfinite_grads:
                    metrics["skipped"] = float(skipped)
                if logger is not None:
                    logger.log(step, "train", float(step_loss), metrics, lr, elapsed)
                if bar is not None:
                    rate = config.batch_size * (step - start) / max(elapsed, 1e-9)
                    value = metrics.get(metric_name, float("nan"))
                    bar.set_postfix(
                        loss=f"{float(step_loss):.4g}",
                        **{metric_name: f"{value:.4g}"},
                        samples_s=f"{rate:.0f}",
                    )
            if bar is not None:
                bar.update(1)

            at_eval = config.eval_every > 0 and step % config.eval_every == 0
            at_ckpt = config.ckpt_every > 0 and step % config.ckpt_every == 0
            out_of_time = (
                config.time_limit is not None
                and elapsed + time.perf_counter() - tick >= config.time_limit
            )
            if config.time_limit is not None:
                # Rank 0's clock decides, so that every rank stops at the same step.
                out_of_time = _any_rank(out_of_time and main, info)
            if at_eval or at_ckpt or step == end or out_of_time:
                now = time.perf_counter()
                elapsed += now - tick
                rng_ranks = _gather(_rng_states(generator), info)
                if main:
                    improved = False
                    if at_eval or step == end or out_of_time:
                        val_loss, val = evaluate(
                            model,
                            task,
                            "val",
                            config.eval_samples,
                            config.eval_batch_size,
                            device=device,
                            dtype=dtype,
                        )
                        assert logger is not None
                        logger.log(step, "val", val_loss, val, lr, elapsed)
                        value = val.get(metric_name, float("nan"))
                        improved = _is_better(value, best, task.higher_is_better)
                        if improved:
                            best = value
                    saved_config = model_config
                    if eps is not None:
                        # ε is a plain attribute, not a weight: the config carries the value.
                        saved_config = model_config.replace(epsilon=current_epsilon(model))
                    state_now = training_state(step, val, rng_ranks)
                    folder = save_checkpoint(
                        run_dir, "last", model, saved_config, state_now, extra_files
                    )
                    saved = (folder, step)
                    if improved:
                        save_checkpoint(
                            run_dir, "best", model, saved_config, state_now, extra_files
                        )
                barrier()
                tick = time.perf_counter()
            if out_of_time:
                break
    finally:
        # An interrupted run keeps what it last checkpointed; `--resume` continues from there.
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    return TrainResult(run_dir, step, elapsed, best, val, model, task, skipped, info.rank)


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The saved config.yaml of a run folder, as a dict."""
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} has no {CONFIG_YAML}; is it a run folder from `memrnn train`?"
        )
    return yaml.safe_load(path.read_text()) or {}


__all__ = [
    "CONFIG_YAML",
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
