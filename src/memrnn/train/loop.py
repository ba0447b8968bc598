"""The training loop: a task, a model from the registry, AdamW with warm-up + cosine, checkpoints.

    result = train(resolve_config(overrides={"model": "bmru-small", "task": "copy-first-input",
                                             "steps": "200", "out": "runs/x"}))

Each step draws a batch from the task's train split with a dedicated torch.Generator, so a
run is a pure function of its config. Every `eval_every` steps (and at the end) the val split
is evaluated, `last` is checkpointed and `best` replaced when the task's primary metric
improved. `resume=True` restores weights, optimiser, scheduler, step, and the RNG states of
torch, numpy, random and the batch generator: the resumed run ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from memrnn.models.config import ModelConfig
from memrnn.models.registry import build_model, config_for_task, current_epsilon
from memrnn.tasks.base import Task
from memrnn.train.checkpoint import find_checkpoint, load_training, load_weights, save_checkpoint
from memrnn.train.config import TrainConfig, UsageError
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


def build_task(name: str, seq_len: int | None = None, **kwargs: Any) -> Task:
    """create_task with `seq_len` mapped to the task's length argument (seq_len or train_len)."""
    from memrnn.tasks.registry import create_task, task_kwargs

    try:
        if seq_len is not None:
            valid = task_kwargs(name)
            key = next((k for k in ("seq_len", "train_len") if k in valid), None)
            if key is None:
                raise UsageError(f"task {name!r} has a fixed length; drop --seq-len")
            kwargs = {key: seq_len, **kwargs}
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
) -> tuple[float, dict[str, float]]:
    """(mean loss, mean metrics) over a fixed pass of `split`, weighted by batch size."""
    was_training = model.training
    model.eval()
    total, loss_sum, sums = 0, 0.0, {}
    try:
        for batch in task.iter_split(split, batch_size, max_samples=samples, seq_len=seq_len):
            batch = move_batch(batch, device)
            out, _ = model(batch.x, lengths=batch.lengths)
            n = batch.x.shape[0]
            loss_sum += float(task.loss(out, batch)) * n
            for k, v in task.metrics(out, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            total += n
    finally:
        model.train(was_training)
    return loss_sum / max(total, 1), {k: v / max(total, 1) for k, v in sums.items()}


def move_batch(batch: Any, device: torch.device | str) -> Any:
    return type(batch)(*(None if t is None else t.to(device) for t in batch))


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
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(
            f"cannot write to output folder {str(run_dir)!r} ({err.strerror}); choose another --out"
        ) from None
    return run_dir


# -- the loop ----------------------------------------------------------------------------------
def train(config: TrainConfig, echo: bool = False) -> TrainResult:
    """Runs (or resumes) the training run described by `config`."""
    run_dir = prepare_run_dir(config.out)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    task = build_task(config.task, config.seq_len, **config.task_kwargs)

    resume_folder = None
    if config.resume:
        try:
            resume_folder = find_checkpoint(run_dir, "last")
        except FileNotFoundError:
            raise UsageError(
                f"--resume: no checkpoint in {str(run_dir)!r}; start without --resume"
            ) from None
        model_config = ModelConfig.from_json((resume_folder / "model_config.json").read_text())
    else:
        try:
            model_config = config_for_task(config.model, task, **config.model_overrides)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    model = build_model(model_config).to(device)

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
    start, best, elapsed = 0, None, 0.0
    if resume_folder is not None:
        load_weights(model, resume_folder, map_location=str(device))
        state = load_training(resume_folder)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state["rng"], generator)
        start, best, elapsed = state["step"], state.get("best"), state.get("train_time", 0.0)

    logger = MetricsLogger(run_dir, resume_step=start, tensorboard=config.tensorboard)
    metric_name = task.primary_metric
    end = config.steps if config.stop_at is None else min(config.steps, config.stop_at)

    def training_state(step: int, val: dict[str, float]) -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_states(generator),
            "step": step,
            "best": best,
            "train_time": elapsed,
            "val": val,
            "train_config": config.to_dict(),
            "task": {
                "name": task.name,
                "primary_metric": metric_name,
                "higher_is_better": task.higher_is_better,
            },
        }

    bar = None
    if config.progress:
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
    tick = time.perf_counter()
    try:
        for step in range(start + 1, end + 1):
            if eps is not None:
                eps.apply(model, step - 1)
            batch = move_batch(task.batch(config.batch_size, "train", generator), device)
            out, _ = model(batch.x, lengths=batch.lengths)
            loss = task.loss(out, batch)
            extra = penalty(model, config.write_penalty)
            total_loss = loss if extra is None else loss + extra
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            if step % config.log_every == 0 or step == end:
                now = time.perf_counter()
                elapsed += now - tick
                tick = now
                metrics = task.metrics(out.detach(), batch)
                logger.log(step, "train", float(loss.detach()), metrics, lr, elapsed)
                if bar is not None:
                    rate = config.batch_size * (step - start) / max(elapsed, 1e-9)
                    value = metrics.get(metric_name, float("nan"))
                    bar.set_postfix(
                        loss=f"{float(loss.detach()):.4g}",
                        **{metric_name: f"{value:.4g}"},
                        samples_s=f"{rate:.0f}",
                    )
            if bar is not None:
                bar.update(1)

            at_eval = config.eval_every > 0 and step % config.eval_every == 0
            out_of_time = (
                config.time_limit is not None
                and elapsed + time.perf_counter() - tick >= config.time_limit
            )
            if at_eval or step == end or out_of_time:
                now = time.perf_counter()
                elapsed += now - tick
                val_loss, val = evaluate(
                    model, task, "val", config.eval_samples, config.eval_batch_size, device=device
                )
                logger.log(step, "val", val_loss, val, lr, elapsed)
                value = val.get(metric_name, float("nan"))
                improved = _is_better(value, best, task.higher_is_better)
                if improved:
                    best = value
                saved_config = model_config
                if eps is not None:
                    # ε is a plain attribute, not a weight: the config carries the value reached.
                    saved_config = model_config.replace(epsilon=current_epsilon(model))
                state_now = training_state(step, val)
                save_checkpoint(run_dir, "last", model, saved_config, state_now)
                if improved:
                    save_checkpoint(run_dir, "best", model, saved_config, state_now)
                tick = time.perf_counter()
            if out_of_time:
                break
    except KeyboardInterrupt:
        # An interrupted run keeps what it last checkpointed; `--resume` continues from there.
        if bar is not None:
            bar.close()
        logger.close()
        raise
    if bar is not None:
        bar.close()
    logger.close()
    return TrainResult(run_dir, step, elapsed, best, val, model, task)


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
    "build_task",
    "evaluate",
    "load_run_config",
    "lr_factor",
    "param_groups",
    "seed_everything",
    "train",
]
