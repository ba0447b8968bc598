"""Training: resolved run configs, the training loop (single- or multi-process), verified
atomic checkpoints and metric logs."""

from memrnn.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    find_checkpoint,
    find_good_checkpoint,
    load_model,
    save_checkpoint,
    verify_checkpoint,
)
from memrnn.train.config import TrainConfig, TrainingDiverged, UsageError, resolve_config
from memrnn.train.logging import MetricsLogger, read_metrics
from memrnn.train.loop import TrainResult, build_task, evaluate, train

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "MetricsLogger",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "UsageError",
    "build_task",
    "evaluate",
    "find_checkpoint",
    "find_good_checkpoint",
    "load_model",
    "read_metrics",
    "resolve_config",
    "save_checkpoint",
    "train",
    "verify_checkpoint",
]
