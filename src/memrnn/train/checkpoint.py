"""Checkpoints: one folder per tag (`last`, `best`) inside the run folder.

    <run>/last/model.safetensors    weights (complex tensors stored as (..., 2) real views)
    <run>/last/model_config.json    the ModelConfig that rebuilds the model
    <run>/last/training.pt          optimiser, scheduler, RNG states, step, metrics (torch.save)

A checkpoint is written into a temporary folder beside the target, every file fsynced, then
swapped in with two renames (old -> .<tag>.old, new -> <tag>) and the old one deleted. A
failure at any point leaves a complete checkpoint: the previous one at <tag> (or, between the
two renames, at .<tag>.old, which `find_checkpoint` falls back to).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from memrnn.models.config import ModelConfig
from memrnn.models.registry import build_model

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TRAINING = "training.pt"
TAGS = ("best", "last")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def weights_to_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous, unshared copies of the state dict; complex tensors as real views."""
    tensors, complex_keys = {}, []
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_complex():
            value = torch.view_as_real(value)
            complex_keys.append(key)
        tensors[key] = value.contiguous().clone()
    return tensors, {"complex": json.dumps(complex_keys)}


def tensors_to_weights(
    tensors: dict[str, Tensor],
    metadata: dict[str, str] | None,
) -> dict[str, Tensor]:
    complex_keys = set(json.loads((metadata or {}).get("complex", "[]")))
    return {k: torch.view_as_complex(v) if k in complex_keys else v for k, v in tensors.items()}


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    model: nn.Module,
    model_config: ModelConfig,
    training: dict[str, Any] | None = None,
) -> Path:
    """Atomically writes checkpoint `tag` under `run_dir`; returns its folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / tag
    old = run_dir / f".{tag}.old"
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}.tmp-", dir=run_dir))
    try:
        tensors, metadata = weights_to_tensors(model)
        save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / MODEL_CONFIG).write_text(model_config.to_json())
        torch.save(training or {}, tmp / TRAINING)
        for name in (WEIGHTS, MODEL_CONFIG, TRAINING):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path, tag: str | None = None) -> Path:
    """The checkpoint folder for `path`: a checkpoint folder itself, or a run folder (then
    `tag`, by default `best` if present, else `last`). FileNotFoundError when there is none."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    tags = (tag,) if tag else TAGS
    for t in tags:
        for candidate in (path / t, path / f".{t}.old"):
            if (candidate / WEIGHTS).is_file() and (candidate / MODEL_CONFIG).is_file():
                return candidate
    raise FileNotFoundError(
        f"no checkpoint in {str(path)!r} (expected {'/'.join(tags)}/{WEIGHTS}); "
        "pass a run folder written by `memrnn train --out`"
    )


def load_model(
    path: str | Path, tag: str | None = None, map_location: str = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Rebuilds the model of a checkpoint from its config and loads its weights."""
    folder = find_checkpoint(path, tag)
    config = ModelConfig.from_json((folder / MODEL_CONFIG).read_text())
    model = build_model(config)
    load_weights(model, folder, map_location)
    return model, config


def load_weights(model: nn.Module, folder: str | Path, map_location: str = "cpu") -> None:
    from safetensors import safe_open

    path = str(Path(folder) / WEIGHTS)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    tensors = tensors_to_weights(load_file(path, device=map_location), metadata)
    model.load_state_dict(tensors)


def load_training(folder: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    return torch.load(Path(folder) / TRAINING, map_location=map_location, weights_only=False)


__all__ = [
    "MODEL_CONFIG",
    "TAGS",
    "TRAINING",
    "WEIGHTS",
    "find_checkpoint",
    "load_model",
    "load_training",
    "load_weights",
    "save_checkpoint",
]
