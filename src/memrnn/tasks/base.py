"""What a task is: a seeded source of batches that declares its shapes, loss and metrics.

Every task, synthetic or read from files, subclasses `Task`. Models are built from the
declared sizes and target kind; the training loop calls `batch`, `loss` and `metrics` and
never looks inside a task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

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
        self,
        batch_size: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        seq_len: int | None = None,
    ) -> Batch:
        """A random batch of `split`, drawn with `generator` (seeded by the caller)."""
        raise NotImplementedError

    def iter_split(
        self,
        split: str,
        batch_size: int,
        max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        """Deterministic pass over a split (a fixed seed per split for generated tasks)."""
        raise NotImplementedError

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Scalar loss of the model's output (shaped like the targets, plus class logits).

        The default follows `loss_kind`: mean cross-entropy or mean squared error over the
        samples ("last"; a per-step output (B, T, C) is read at the last valid step) or over
        the steps selected by `mask` / `lengths` ("sequence").
        """
        if self.loss_kind == "mse":
            return mse_loss(output, batch, self.target)
        return cross_entropy_loss(output, batch, self.target)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        """Named metric values (the primary metric included) of one batch; means over samples.

        The default gives loss and accuracy (cross-entropy) or loss, mse and nrmse (mse).
        """
        if self.loss_kind == "mse":
            return regression_metrics(output, batch, self.target)
        return classification_metrics(output, batch, self.target)

    def chance(self) -> float:
        """The primary metric of an uninformed predictor (for 'near chance' checks)."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether the task has samples for `split` (a file-backed task may have no val split)."""
        return check_split(split) in SPLITS

    def checkpoint_files(self) -> dict[str, str]:
        """name -> text of files that every checkpoint of a run on this task carries (e.g.
        the input normalisation and class labels of a file-backed task, which `predict`,
        `stream` and `export` read without rebuilding the task). Empty by default."""
        return {}

    def recorded_kwargs(self) -> dict[str, Any]:
        """Constructor arguments resolved when the task was built (e.g. a data file's absolute
        path and checksum), which a run saves with its task arguments so that `eval` and
        `--resume` rebuild exactly this task. Empty by default."""
        return {}


def check_split(split: str) -> str:
    """Return `split` if it names a split, else raise a ValueError listing the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Validate an integer hyperparameter (bools rejected) that must be >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a real hyperparameter in [low, high] (open ends as flagged)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def split_seed(seed: int, split: str) -> int:
    """A fixed seed per (task seed, split) for the deterministic evaluation passes."""
    return (int(seed) * 1_000_003 + 7919 * (SPLITS.index(check_split(split)) + 1)) % (2**62)


def last_step(output: Tensor, lengths: Tensor | None) -> Tensor:
    """Select the last valid step of a per-step output (B, T, C) -> (B, C)."""
    if lengths is None:
        return output[:, -1]
    idx = (lengths.to(output.device).long() - 1).clamp(min=0)
    return output[torch.arange(output.shape[0], device=output.device), idx]


def _flatten(output: Tensor, batch: Batch, target: str, classes: bool) -> tuple[Tensor, Tensor]:
    """Flatten prediction and target to the samples/steps that count.

    Returns (pred, y) with pred (M, C) and y (M,) for classes, or pred, y (M, O) for regression.
    """
    y = batch.y
    if target == "last":
        if output.dim() == 3:
            output = last_step(output, batch.lengths)
        return (output, y) if classes else (output.reshape(y.shape), y)
    mask = batch.mask
    if mask is None and batch.lengths is not None:
        steps = torch.arange(y.shape[1], device=y.device)
        mask = steps[None, :] < batch.lengths.to(y.device)[:, None]
    if not classes and output.shape != y.shape:
        output = output.reshape(y.shape)
    if mask is None:
        if classes:
            return output.reshape(-1, output.shape[-1]), y.reshape(-1)
        return output.reshape(-1, y.shape[-1]), y.reshape(-1, y.shape[-1])
    mask = mask.to(output.device)
    return output[mask], y[mask]


def _at_least_float32(t: Tensor) -> Tensor:
    # Half-precision outputs are scored in float32; float32/float64 keep their precision.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cross_entropy_loss(
    output: Tensor, batch: Batch, target: str, weight: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy over samples ("last") or unmasked steps ("sequence"); with `weight`
    (C,), each term weighed by its class's weight and the mean taken over the weights."""
    logits, y = _flatten(output, batch, target, classes=True)
    logits = _at_least_float32(logits)
    if weight is not None:
        weight = weight.to(logits.dtype)
    return torch.nn.functional.cross_entropy(logits, y, weight=weight)


def mse_loss(output: Tensor, batch: Batch, target: str) -> Tensor:
    """Mean squared error over samples ("last") or unmasked steps ("sequence")."""
    pred, y = _flatten(output, batch, target, classes=False)
    pred = _at_least_float32(pred)
    return torch.nn.functional.mse_loss(pred, y.to(pred.dtype))


def classification_metrics(output: Tensor, batch: Batch, target: str) -> dict[str, float]:
    """loss (nats) and accuracy over the samples or unmasked steps."""
    logits, y = _flatten(output, batch, target, classes=True)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(_at_least_float32(logits), y)
        acc = (logits.argmax(-1) == y).float().mean()
    return {"loss": float(loss), "accuracy": float(acc)}


def regression_metrics(output: Tensor, batch: Batch, target: str) -> dict[str, float]:
    """loss and mse (the same number), and nrmse = RMSE / std of the targets."""
    pred, y = _flatten(output, batch, target, classes=False)
    with torch.no_grad():
        pred = _at_least_float32(pred)
        y = y.to(pred.dtype)
        mse = torch.nn.functional.mse_loss(pred, y)
        std = y.std(unbiased=False)
        nrmse = mse.sqrt() / std if float(std) > 0 else torch.tensor(float("nan"))
    return {"loss": float(mse), "mse": float(mse), "nrmse": float(nrmse)}


def default_generator(task: Task) -> torch.Generator:
    """The task's own generator, seeded from `task.seed` on first use and then carried on,
    so that successive `batch` calls without a generator draw fresh samples."""
    gen = task.__dict__.get("_default_generator")
    if gen is None:
        gen = torch.Generator().manual_seed(int(getattr(task, "seed", 0)))
        task.__dict__["_default_generator"] = gen
    return gen


def holdout(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded split of range(n) into (kept, held out) index tensors, each in ascending order.

    The held-out part has round(fraction * n) samples.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_out = int(round(fraction * n))
    return perm[n_out:].sort().values, perm[:n_out].sort().values


class GeneratedTask(Task):
    """A task whose samples are drawn on the fly from a seeded generator.

    Subclasses implement `_generate(batch_size, split, generator, seq_len)`. `iter_split`
    replays a fixed stream per split (seeded from `seed` and the split name), so two passes
    over a split see the same samples.
    """

    seed: int = 0
    eval_samples: int = 1024

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: torch.Generator,
        seq_len: int | None,
    ) -> Batch:
        raise NotImplementedError

    def batch(
        self,
        batch_size: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        seq_len: int | None = None,
    ) -> Batch:
        check_int("batch_size", batch_size)
        check_split(split)
        if seq_len is not None:
            check_int("seq_len", seq_len)
        if generator is None:
            generator = default_generator(self)
        return self._generate(batch_size, split, generator, seq_len)

    def iter_split(
        self,
        split: str,
        batch_size: int,
        max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        check_int("batch_size", batch_size)
        check_split(split)
        total = self.eval_samples if max_samples is None else check_int("max_samples", max_samples)
        generator = torch.Generator().manual_seed(split_seed(self.seed, split))
        done = 0
        while done < total:
            n = min(batch_size, total - done)
            yield self.batch(n, split, generator, seq_len)
            done += n


class ArrayTask(Task):
    """A classification task over fixed arrays of samples, one pair of tensors per split.

    Subclasses fill `self._data[split] = (inputs, labels)` (labels int64, one per sample) and
    implement `_to_batch(inputs, labels)`, which turns a slice of samples into a Batch; a
    subclass may instead override `_split_data` to return other aligned per-sample tensors
    (None for an absent one), which `_to_batch` then receives in the same order.
    `batch` draws samples with replacement using the generator; `iter_split` walks a split
    in order.
    """

    target: ClassVar[str] = "last"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    seed: int = 0
    _data: dict[str, tuple[Tensor, Tensor]]

    def _split_data(self, split: str) -> tuple[Tensor, Tensor]:
        data = self._data.get(check_split(split))
        if data is None:
            raise ValueError(
                f"{self.name} has no {split!r} split; set val_fraction > 0 to split one off train"
            )
        return data

    def _to_batch(self, inputs: Tensor, labels: Tensor) -> Batch:
        raise NotImplementedError

    def _no_seq_len(self, seq_len: int | None) -> None:
        if seq_len is not None:
            raise ValueError(
                f"seq_len cannot be overridden for {self.name}: its length is fixed by the data"
            )

    def has_split(self, split: str) -> bool:
        return check_split(split) in self._data

    def split_size(self, split: str) -> int:
        """Number of samples in `split`."""
        return int(self._split_data(split)[0].shape[0])

    def _take(self, split: str, idx: Tensor | slice) -> Batch:
        """The Batch of the samples `idx` of `split`."""
        return self._to_batch(*(None if p is None else p[idx] for p in self._split_data(split)))

    def batch(
        self,
        batch_size: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        seq_len: int | None = None,
    ) -> Batch:
        check_int("batch_size", batch_size)
        self._no_seq_len(seq_len)
        if generator is None:
            generator = default_generator(self)
        idx = torch.randint(0, self.split_size(split), (batch_size,), generator=generator)
        return self._take(split, idx)

    def iter_split(
        self,
        split: str,
        batch_size: int,
        max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        check_int("batch_size", batch_size)
        self._no_seq_len(seq_len)
        total = self.split_size(split)
        if max_samples is not None:
            total = min(total, check_int("max_samples", max_samples))
        for start in range(0, total, batch_size):
            yield self._take(split, slice(start, min(start + batch_size, total)))

    def chance(self) -> float:
        return 1.0 / self.output_size
