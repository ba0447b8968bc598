"""Training: resolved run configs, the training loop, atomic checkpoints and metric logs."""

from memrnn.train.checkpoint import find_checkpoint, load_model, save_checkpoint
from memrnn.train.config import TrainConfig, UsageError, resolve_config
from memrnn.train.logging import MetricsLogger, read_metrics
from memrnn.train.loop import TrainResult, build_task, evaluate, train

__all__ = [
    "MetricsLogger",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "build_task",
    "evaluate",
    "find_checkpoint",
    "load_model",
    "read_metrics",
    "resolve_config",
    "save_checkpoint",
    "train",
]
