"""What a task is: a seeded source of batches that declares its shapes, loss and metrics.

Every task, synthetic or read from files, subclasses `Task`. Models are built from the
declared sizes and target kind; the training loop calls `batch`, `loss` and `metrics` and
never looks inside a task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

TARGETS = ("last", "sequence")
INPUT_KINDS = ("real", "tokens")
SPLITS = ("train", "val", "test")


class Batch(NamedTuple):
    """One batch.

    x: (B, T, input_size) float, or (B, T) int64 token ids when the task's input_kind is
       "tokens".
    y: target="last": (B,) int64 class ids (cross-entropy) or (B, output_size) float (mse);
       target="sequence": (B, T) int64 ids or (B, T, output_size) float.
    mask: (B, T) bool, the steps that count in a "sequence" loss (None: all of them).
    lengths: (B,) int64 valid length of each sequence when padded (None: all T steps).
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    lengths: Tensor | None = None


class Task:
    """Base class. Subclasses set the class attributes and implement `_generate`.

    Class attributes:
        name: registry name (e.g. "copy-first-input").
        target: "last" (one prediction per sequence, read at the last valid step) or
            "sequence" (one prediction per step).
        loss_kind: "cross_entropy" or "mse".
        primary_metric: the metric used to pick the best checkpoint.
        higher_is_better: whether larger primary_metric is better.
    Instance attributes (set in __init__): input_size, output_size, seq_len, input_kind.
    """

    name: ClassVar[str] = ""
    target: ClassVar[str] = "last"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    input_size: int
    output_size: int
    seq_len: int
    input_kind: str = "real"

    def batch(
        self, batch_size: int, split: str = "train", generator: torch.Generator | None = None,
        seq_len: int | None = None,
    ) -> Batch:
        """A random batch of `split`, drawn with `generator` (seeded by the caller)."""
        raise NotImplementedError

    def iter_split(
        self, split: str, batch_size: int, max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        """Deterministic pass over a split (a fixed seed per split for generated tasks)."""
        raise NotImplementedError

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Scalar loss of the model's output (shaped like the targets, plus class logits)."""
        raise NotImplementedError

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        """Named metric values (the primary metric included) of one batch; means over samples."""
        raise NotImplementedError

    def chance(self) -> float:
        """The primary metric of an uninformed predictor (for 'near chance' checks)."""
        raise NotImplementedError
