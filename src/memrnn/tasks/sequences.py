"""Real and physical sequence tasks: images read pixel by pixel, MNIST-1D, sklearn digits,
Mackey-Glass prediction and character-level language modelling.

    smnist / psmnist   28x28 MNIST digits as 784 steps of 1 pixel (ps: a fixed permutation)
    mnist1d            40-step 1-D digits from the `mnist1d` generator, offline
    digits             scikit-learn's 8x8 digits as 64 steps of 1 pixel
    mackey-glass       predict the Mackey-Glass series `horizon` steps ahead, NRMSE
    text               next-character prediction on any local text file, bits per char

Image-like tasks have a length fixed by the data: a `seq_len` override raises ValueError.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Generator, Tensor

from memrnn.tasks.base import (
    ArrayTask,
    Batch,
    GeneratedTask,
    check_float,
    check_int,
    check_split,
    classification_metrics,
    holdout,
)
from memrnn.tasks.registry import register_task


class _SequenceClassification(ArrayTask):
    """Samples stored as (N, T) float32; a batch is x (B, T, 1), y (B,) int64."""

    def _set_splits(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        val_fraction: float,
    ) -> None:
        keep, held = holdout(y_train.shape[0], val_fraction, self.seed)
        self._data = {"train": (x_train[keep], y_train[keep]), "test": (x_test, y_test)}
        if held.numel() > 0:
            self._data["val"] = (x_train[held], y_train[held])

    def _to_batch(self, inputs: Tensor, labels: Tensor) -> Batch:
        return Batch(inputs.float().unsqueeze(-1), labels)


class _PixelMNIST(_SequenceClassification):
    """Shared implementation of smnist / psmnist (see the subclasses)."""

    permute: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str | os.PathLike,
        black_pixels: int = 0,
        subset: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        permutation_seed: int = 0,
        sha256: str | None = None,
    ) -> None:
        if data_dir is None:
            raise ValueError("data_dir must name a folder with the MNIST IDX files, got None")
        self.black_pixels = check_int("black_pixels", black_pixels, minimum=0)
        if subset is not None:
            check_int("subset", subset)
        val_fraction = check_float("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.seed = check_int("seed", seed, minimum=0)
        self.permutation_seed = check_int("permutation_seed", permutation_seed, minimum=0)
        # Imported here so that this module works without the image loaders installed.
        from memrnn.tasks.images import check_recorded_digest, load_mnist, mnist_sha256

        # Recorded with a run (`recorded_kwargs`): eval and --resume refuse other data.
        self.data_dir = Path(data_dir).resolve()
        self.sha256 = mnist_sha256(self.data_dir)
        check_recorded_digest(self.name, self.data_dir, self.sha256, sha256)

        arrays = {}
        for split in ("train", "test"):
            images, labels = load_mnist(data_dir, split, kind="mnist")
            images = torch.as_tensor(np.ascontiguousarray(images)).reshape(len(images), -1)
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
            if subset is not None:
                images, labels = images[:subset], labels[:subset]
            arrays[split] = (images, labels)
        n_pixels = arrays["train"][0].shape[1]
        if self.permute:
            g = torch.Generator().manual_seed(self.permutation_seed)
            self.permutation = torch.randperm(n_pixels, generator=g)
            arrays = {k: (v[0][:, self.permutation], v[1]) for k, v in arrays.items()}
        self._set_splits(*arrays["train"], *arrays["test"], val_fraction)
        self.seq_len = n_pixels + self.black_pixels
        self.input_size, self.output_size = 1, 10

    def recorded_kwargs(self) -> dict[str, Any]:
        """The data folder's absolute path and the SHA-256 of its IDX files."""
        return {"data_dir": str(self.data_dir), "sha256": self.sha256}

    def _to_batch(self, inputs: Tensor, labels: Tensor) -> Batch:
        x = inputs.float() / 255.0
        if self.black_pixels:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.black_pixels)], dim=1)
        return Batch(x.unsqueeze(-1), labels)


@register_task("smnist")
class SequentialMNIST(_PixelMNIST):
    """Sequential MNIST: the 28x28 pixels in row-major order, one per step, scaled to [0, 1];
    the class is read after the last step (Le et al., https://arxiv.org/abs/1504.00941).

    Args:
        data_dir: folder with the MNIST IDX files (read by memrnn.tasks.images.load_mnist).
        black_pixels: zero pixels appended after the image (default 0), to lengthen the delay.
        subset: keep only the first n samples of train and of test (default None: all).
        val_fraction: fraction of train held out (seeded) as "val" (default 0.1).
        seed: seed of the val split and of `batch`'s default generator (default 0).
        permutation_seed: seed of the pixel permutation (psmnist only; default 0).
    Shapes: x (B, 784 + black_pixels, 1) float; y (B,) int64.
    """

    permute = False


@register_task("psmnist")
class PermutedMNIST(_PixelMNIST):
    """Permuted sequential MNIST: as smnist with the pixels in a fixed order drawn once from
    `permutation_seed` (Le et al., https://arxiv.org/abs/1504.00941). Same args and shapes.
    """

    permute = True


_MNIST1D_CACHE: dict[str, tuple[np.ndarray, ...]] = {}
MNIST1D_ARRAYS = ("x", "y", "x_test", "y_test")


def _mnist1d_arrays(cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) from mnist1d's generator with its default args.

    Read from the .npz under `cache_dir` when it is there (checked as an `arrays` data file
    is), else generated: cached per process, and saved under `cache_dir` when given. The
    generator reseeds numpy's and random's global state; both are restored afterwards.
    """
    path = Path(cache_dir) / "mnist1d_default.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        from memrnn.tasks.arrays import _open_npz

        with _open_npz(path) as f:
            missing = [k for k in MNIST1D_ARRAYS if k not in f]
            if missing:
                raise ValueError(f"mnist1d: {path} has no array {missing[0]!r}; delete it")
            return tuple(
                np.asarray(f[k], dtype=np.float32 if k.startswith("x") else np.int64)
                for k in MNIST1D_ARRAYS
            )
    key = "default"
    if key in _MNIST1D_CACHE:
        arrays = _MNIST1D_CACHE[key]
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        # mnist1d seeds the legacy global generator itself; save and restore it around that.
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        try:
            data = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
        arrays = tuple(
            np.asarray(data[k], dtype=np.float32 if k.startswith("x") else np.int64)
            for k in MNIST1D_ARRAYS
        )
        _MNIST1D_CACHE[key] = arrays
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **dict(zip(MNIST1D_ARRAYS, arrays, strict=True)))
    return arrays


def _arrays_sha256(arrays: tuple[np.ndarray, ...]) -> str:
    """One SHA-256 over named arrays: each name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, array in zip(MNIST1D_ARRAYS, arrays, strict=True):
        digest.update(f"{name} {array.dtype.str} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@register_task("mnist1d")
class MNIST1D(_SequenceClassification):
    """MNIST-1D (Greydanus, "Scaling down deep learning", https://arxiv.org/abs/2011.14439),
    generated offline by `mnist1d.data.make_dataset` with its default arguments: 4000 train
    and 1000 test sequences of 40 steps, standardised, 10 classes.

    Args:
        val_fraction: fraction of train held out (seeded) as "val" (default 0.1).
        seed: seed of the val split and of `batch`'s default generator (default 0).
        cache_dir: folder to keep the generated arrays in (default None: per process only).
        sha256: the expected SHA-256 of the arrays (recorded by a run, see
            `recorded_kwargs`); None (default) takes them as they are. A mismatch (an edited
            cache, another generator version) is a ValueError.
    Shapes: x (B, 40, 1) float; y (B,) int64.
    """

    def __init__(
        self,
        val_fraction: float = 0.1,
        seed: int = 0,
        cache_dir: str | None = None,
        sha256: str | None = None,
    ) -> None:
        from memrnn.tasks.images import check_recorded_digest

        val_fraction = check_float("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.seed = check_int("seed", seed, minimum=0)
        arrays = _mnist1d_arrays(cache_dir)
        # Recorded with a run (`recorded_kwargs`): eval and --resume refuse other data.
        self.sha256 = _arrays_sha256(arrays)
        where = "mnist1d's generator"
        if cache_dir is not None:
            where = str(Path(cache_dir).resolve() / "mnist1d_default.npz")
        check_recorded_digest(self.name, where, self.sha256, sha256)
        x, y, x_test, y_test = (torch.from_numpy(a) for a in arrays)
        self._set_splits(x, y, x_test, y_test, val_fraction)
        self.seq_len = int(x.shape[1])
        self.input_size, self.output_size = 1, 10

    def recorded_kwargs(self) -> dict[str, Any]:
        """The SHA-256 of the arrays the task read."""
        return {"sha256": self.sha256}


@register_task("digits")
class Digits(_SequenceClassification):
    """scikit-learn's 8x8 handwritten digits (1797 images) as 64-step sequences of one
    pixel, row-major, scaled to [0, 1]; 10 classes.

    Args:
        test_fraction: fraction held out (seeded) as "test" (default 0.2).
        val_fraction: fraction of the rest held out as "val" (default 0.1).
        seed: seed of both splits and of `batch`'s default generator (default 0).
    Shapes: x (B, 64, 1) float; y (B,) int64.
    """

    def __init__(
        self,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits

        test_fraction = check_float(
            "test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        val_fraction = check_float("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.seed = check_int("seed", seed, minimum=0)
        data = load_digits()
        x = torch.as_tensor(data.data / 16.0, dtype=torch.float32)
        y = torch.as_tensor(data.target, dtype=torch.long)
        rest, test = holdout(len(y), test_fraction, self.seed + 1)
        self._set_splits(x[rest], y[rest], x[test], y[test], val_fraction)
        self.seq_len = 64
        self.input_size, self.output_size = 1, 10


def mackey_glass(
    n_points: int,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
    substeps: int = 10,
    sample_every: int | None = None,
    washout: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Integrate dx/dt = beta x(t - tau) / (1 + x(t - tau)^exponent) - gamma x(t).

    Classic RK4 with step dt = 1 / substeps (tau / dt must be an integer); the delayed value
    at a half step is the mean of its two grid neighbours. The initial history on
    [-tau, 0] is 1.2 + U[-0.1, 0.1] noise per grid point (seeded). The first `washout` time
    units are dropped; then every `sample_every`-th grid point is kept (default: substeps,
    one point per time unit). Returns n_points float64 values, the first at the end of the
    washout.
    """
    sample_every = substeps if sample_every is None else sample_every
    dt = 1.0 / substeps
    delay = tau / dt
    if abs(delay - round(delay)) > 1e-9 or round(delay) < 1:
        raise ValueError(f"tau * substeps must be a positive integer, got {tau} * {substeps}")
    delay = int(round(delay))
    rng = np.random.default_rng(seed)
    n_grid = washout * substeps + n_points * sample_every
    x = [0.0] * (delay + 1 + n_grid)
    x[: delay + 1] = (1.2 + rng.uniform(-0.1, 0.1, delay + 1)).tolist()

    def f(now: float, lagged: float) -> float:
        return beta * lagged / (1.0 + lagged**exponent) - gamma * now

    for i in range(delay, delay + n_grid):
        lag0, lag1 = x[i - delay], x[i - delay + 1]
        lag_half = 0.5 * (lag0 + lag1)
        k1 = f(x[i], lag0)
        k2 = f(x[i] + 0.5 * dt * k1, lag_half)
        k3 = f(x[i] + 0.5 * dt * k2, lag_half)
        k4 = f(x[i] + dt * k3, lag1)
        x[i + 1] = x[i] + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    start = delay + washout * substeps
    return np.asarray(x[start : start + n_points * sample_every : sample_every])


_MG_CACHE: dict[tuple, np.ndarray] = {}


@register_task("mackey-glass")
class MackeyGlass(GeneratedTask):
    """Mackey-Glass prediction: read the series and output x(t + horizon) at every step t.

    One series of `n_points` values, one per time unit (tau = 17, beta = 0.2, gamma = 0.1,
    n = 10; RK4 with dt = 0.1, see `mackey_glass`), is generated once per process from
    `seed` and standardised with the mean and std of its train part. It is cut in time into
    train (first 70%), val (next 10%) and test (last 20%); a sample is a window of seq_len
    steps starting uniformly within one part, with the targets `horizon` steps later,
    inside the same part. Primary metric: NRMSE = RMSE / std of the targets (lower is
    better; predicting the mean scores ~1).

    Args:
        seq_len: window length T (default 256). horizon: k (default 15).
        n_points: series length (default 10000). seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T, 1) float; y (B, T, 1) float.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "mse"
    primary_metric: ClassVar[str] = "nrmse"
    higher_is_better: ClassVar[bool] = False
    bounds: ClassVar[dict[str, tuple[float, float]]] = {
        "train": (0.0, 0.7),
        "val": (0.7, 0.8),
        "test": (0.8, 1.0),
    }

    def __init__(
        self,
        seq_len: int = 256,
        horizon: int = 15,
        n_points: int = 10000,
        seed: int = 0,
        eval_samples: int = 1024,
    ) -> None:
        self.horizon = check_int("horizon", horizon)
        self.n_points = check_int("n_points", n_points, minimum=100)
        self.seed = check_int("seed", seed, minimum=0)
        self.eval_samples = check_int("eval_samples", eval_samples)
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        key = (self.n_points, self.seed)
        if key not in _MG_CACHE:
            _MG_CACHE[key] = mackey_glass(self.n_points, seed=self.seed)
        raw = _MG_CACHE[key]
        train = raw[: self._segment("train")[1]]
        self.mean, self.std = float(train.mean()), float(train.std())
        self.series = torch.as_tensor((raw - self.mean) / self.std, dtype=torch.float32)
        self.input_size, self.output_size = 1, 1

    def _segment(self, split: str) -> tuple[int, int]:
        lo, hi = self.bounds[check_split(split)]
        return int(lo * self.n_points), int(hi * self.n_points)

    def _check_len(self, t: int) -> int:
        shortest = min(b - a for a, b in (self._segment(s) for s in self.bounds))
        if t + self.horizon > shortest:
            raise ValueError(
                f"seq_len + horizon must be <= {shortest} (the shortest split of "
                f"n_points={self.n_points}), got {t} + {self.horizon}"
            )
        return t

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        lo, hi = self._segment(split)
        starts = torch.randint(lo, hi - t - self.horizon + 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(t)  # (B, T)
        x = self.series[idx].unsqueeze(-1)
        y = self.series[idx + self.horizon].unsqueeze(-1)
        return Batch(x, y)

    def chance(self) -> float:
        return 1.0


@register_task("text")
class CharText(GeneratedTask):
    """Character-level language modelling on a local text file (read as UTF-8).

    The vocabulary is the sorted set of characters of the whole file. The file is cut in
    order into train, val (val_fraction) and test (test_fraction) parts. A sample is a window
    of seq_len characters as token ids and, as targets, the same window shifted by one.
    `batch` draws windows at uniform random starts; `iter_split` walks non-overlapping
    windows from the start of the part. Metrics: bpc (bits per character, primary, lower is
    better; uniform guessing gives log2 of the vocabulary size), accuracy, loss (nats).

    Args:
        path: the text file (required).
        seq_len: T (default 128). val_fraction, test_fraction: default 0.05 each.
        seed (default 0).
        vocab: the tokens to encode with, in id order (e.g. a trained model's vocab.json, so
            that ids keep their meaning when the file has changed); None: the sorted
            characters of the file. A character of the file outside it is an error.
        sha256: the file's expected SHA-256; None (default) takes the file as it is now. A
            run records the file's absolute path and SHA-256, so that `--resume` and `eval`
            refuse a file that has changed (or another file at a relative path).
    Shapes: x (B, T) int64 (input_kind "tokens", input_size = vocabulary size);
        y (B, T) int64.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "bpc"
    higher_is_better: ClassVar[bool] = False
    input_kind = "tokens"

    def __init__(
        self,
        path: str | os.PathLike,
        seq_len: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        vocab: list[str] | None = None,
        sha256: str | None = None,
    ) -> None:
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"text task: no text file at {str(path)!r}; pass path=<file>")
        self.path = Path(path).resolve()
        self.seed = check_int("seed", seed, minimum=0)
        val_fraction = check_float("val_fraction", val_fraction, 0.0, 0.5, low_open=True)
        test_fraction = check_float("test_fraction", test_fraction, 0.0, 0.5, low_open=True)
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != self.sha256:
            raise ValueError(
                f"text task: {str(self.path)!r} has changed since the run recorded it "
                f"(SHA-256 {self.sha256[:12]}..., recorded {str(sha256)[:12]}...); use the "
                "same file, or start a new run"
            )
        text = data.decode("utf-8", errors="replace")
        if not text:
            raise ValueError(f"text task: {str(self.path)!r} is empty")
        if vocab is None:
            self.vocab = sorted(set(text))
        else:
            if not isinstance(vocab, list | tuple) or not all(
                isinstance(c, str) and len(c) == 1 for c in vocab
            ):
                raise ValueError("text task: `vocab` must be a list of single characters")
            self.vocab = list(vocab)
            unknown = sorted(set(text) - set(self.vocab))
            if unknown:
                shown = "".join(unknown[:20])
                raise ValueError(
                    f"text task: {str(path)!r} has characters outside `vocab` ({shown!r}); "
                    "the model cannot read them"
                )
        self.char_to_id = {c: i for i, c in enumerate(self.vocab)}
        ids = torch.tensor([self.char_to_id[c] for c in text], dtype=torch.long)
        n = len(ids)
        a, b = int(n * (1 - val_fraction - test_fraction)), int(n * (1 - test_fraction))
        self.parts = {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        self.input_size = self.output_size = len(self.vocab)

    def recorded_kwargs(self) -> dict[str, Any]:
        """The file's absolute path and SHA-256 (see `sha256`)."""
        return {"path": str(self.path), "sha256": self.sha256}

    def _check_len(self, t: int) -> int:
        shortest = min(len(p) for p in self.parts.values())
        if t + 1 > shortest:
            raise ValueError(
                f"seq_len must be <= {shortest - 1} (the shortest split of {self.path}), got {t}"
            )
        return t

    def encode(self, text: str) -> Tensor:
        """Token ids of `text` (every character must be in the vocabulary)."""
        return torch.tensor([self.char_to_id[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """The text of a 1-D tensor of token ids."""
        return "".join(self.vocab[i] for i in ids.tolist())

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        part = self.parts[split]
        starts = torch.randint(0, len(part) - t, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(t)
        return Batch(part[idx], part[idx + 1])

    def iter_split(
        self,
        split: str,
        batch_size: int,
        max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        check_int("batch_size", batch_size)
        t = self._check_len(check_int("seq_len", seq_len) if seq_len else self.seq_len)
        part = self.parts[check_split(split)]
        starts = torch.arange(0, len(part) - t, t)
        if max_samples is not None:
            starts = starts[: check_int("max_samples", max_samples)]
        for i in range(0, len(starts), batch_size):
            idx = starts[i : i + batch_size, None] + torch.arange(t)
            yield Batch(part[idx], part[idx + 1])

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        out = classification_metrics(output, batch, self.target)
        out["bpc"] = out["loss"] / math.log(2.0)
        return out

    def chance(self) -> float:
        return math.log2(len(self.vocab))
