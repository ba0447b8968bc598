"""Image classification data for spiking networks: MNIST / Fashion-MNIST (IDX files), N-MNIST
(event files read through `tonic`), and scikit-learn's bundled 8×8 digits (offline default).

Loaders are plain functions returning tensors; the Task classes wrap them with a spike
encoding (`memrnn.tasks.encoding`). Nothing is downloaded: files are read from a folder the
user names, and a missing file raises a FileNotFoundError naming the folder and every file
expected there.

IDX format (LeCun's MNIST files): bytes 0–1 zero, byte 2 the dtype code (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of
dimensions, then one big-endian uint32 per dimension, then the data, big-endian, row-major.

Splits: "train" and "test" are the datasets' own; "val" is carved from "train" (ours): the
last `VAL_FRACTION` of a fixed seeded permutation of the training set, which "train" then
excludes.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memrnn.tasks.base import (
    Batch,
    Task,
    check_float,
    check_int,
    check_split,
    default_generator,
    split_seed,
)
from memrnn.tasks.encoding import rate_encode

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NMNIST_FOLDERS = {"train": "Train", "test": "Test"}
VAL_FRACTION = 0.1
_SPLIT_SEED = 1234


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (gzipped when the name ends in .gz) into a native-endian array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"read_idx: cannot read {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(
            f"read_idx: {path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})"
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"read_idx: {path} is truncated (header of {ndim} dimensions incomplete)")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"read_idx: {path} is truncated or corrupt: {len(data) - header} data bytes for "
            f"shape {shape} of {dtype.name} (expected {expected})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def files_sha256(files: list[tuple[str, Path]]) -> str:
    """One SHA-256 over (name, file) pairs, in order: each name, then its file's bytes."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mnist_sha256(folder: str | Path) -> str | None:
    """One SHA-256 over the four MNIST IDX files of `folder` (None when one is missing)."""
    files = []
    for split in ("train", "test"):
        for name in MNIST_FILES[split]:
            path = _find(Path(folder), name)
            if path is None:
                return None
            files.append((name, path))
    return files_sha256(files)


def nmnist_sha256(folder: str | Path) -> str | None:
    """One SHA-256 over the N-MNIST recordings of `folder` (NMNIST/{Train,Test}/<digit>/*.bin,
    each with its relative path, in sorted order); None when a split has none."""
    root = Path(folder) / "NMNIST"
    files = []
    for split in NMNIST_FOLDERS.values():
        found = sorted((root / split).glob("*/*.bin"))
        if not found:
            return None
        files += [(p.relative_to(root).as_posix(), p) for p in found]
    return files_sha256(files)


def check_recorded_digest(
    owner: str, where: str | Path, digest: str | None, sha256: str | None
) -> None:
    """ValueError when data a run recorded (`sha256`) differs from what is there now."""
    if sha256 is not None and digest != sha256:
        now = f"SHA-256 {digest[:12]}..." if digest else "files missing"
        raise ValueError(
            f"{owner}: the data in {str(where)!r} has changed since the run recorded it "
            f"({now}, recorded {str(sha256)[:12]}...); use the same data, or start a new run"
        )


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(
    folder: str | Path, split: str = "train", kind: str = "mnist"
) -> tuple[Tensor, Tensor]:
    """MNIST or Fashion-MNIST from the four standard IDX files in `folder` (plain or .gz).

    Returns images (N, 28, 28) uint8 and labels (N,) int64 of the "train" or "test" split.
    """
    if kind not in ("mnist", "fashion-mnist"):
        raise ValueError(f"load_mnist: unknown kind {kind!r}; expected 'mnist' or 'fashion-mnist'")
    if split not in MNIST_FILES:
        raise ValueError(f"load_mnist: unknown split {split!r}; expected 'train' or 'test'")
    folder = Path(folder)
    found = [_find(folder, name) for name in MNIST_FILES[split]]
    if any(p is None for p in found):
        wanted = ", ".join(f"{n} (or {n}.gz)" for pair in MNIST_FILES.values() for n in pair)
        raise FileNotFoundError(
            f"{kind} data not found in {folder.resolve()}: expected the files {wanted}. "
            f"Download them once and put them in that folder."
        )
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"load_mnist: inconsistent files in {folder}: images {images.shape}, "
            f"labels {labels.shape}"
        )
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


def load_nmnist(
    folder: str | Path, split: str = "train", n_time_bins: int = 100
) -> tuple[Tensor, Tensor]:
    """N-MNIST event recordings from `folder` (tonic's layout, no download), as frames.

    Returns frames (N, n_time_bins, 2*34*34) float32 (event counts per polarity and pixel and
    time bin) and labels (N,) int64. `folder` must contain tonic's extracted NMNIST folder
    (NMNIST/Train/<digit>/*.bin and NMNIST/Test/<digit>/*.bin).
    """
    if split not in NMNIST_FOLDERS:
        raise ValueError(f"load_nmnist: unknown split {split!r}; expected 'train' or 'test'")
    folder = Path(folder)
    expected = folder / "NMNIST" / NMNIST_FOLDERS[split]
    if not expected.is_dir() or not any(expected.glob("*/*.bin")):
        raise FileNotFoundError(
            f"N-MNIST data not found in {folder.resolve()}: expected the extracted folders "
            f"NMNIST/Train/0..9/*.bin and NMNIST/Test/0..9/*.bin under it (tonic's layout; the "
            f"archives Train.zip and Test.zip from the N-MNIST release, unzipped there)."
        )
    import tonic
    import tonic.transforms as tt

    sensor = tonic.datasets.NMNIST.sensor_size
    to_frames = tt.ToFrame(sensor_size=sensor, n_time_bins=n_time_bins)
    dataset = tonic.datasets.NMNIST(str(folder), train=(split == "train"), transform=to_frames)
    frames, labels = [], []
    for frame, label in dataset:
        frames.append(
            torch.as_tensor(np.asarray(frame), dtype=torch.float32).reshape(n_time_bins, -1)
        )
        labels.append(int(label))
    return torch.stack(frames), torch.tensor(labels, dtype=torch.int64)


def load_digits_images(
    seed: int = 0, test_fraction: float = 0.2
) -> dict[str, tuple[Tensor, Tensor]]:
    """scikit-learn's bundled 8×8 digits: {"train", "val", "test"} -> (images (N, 64) in [0, 1]
    float32, labels (N,) int64), from a fixed seeded split (val carved from train)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.float32) / 16.0)
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    n_val = int(round(VAL_FRACTION * (len(x) - n_test)))
    parts = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }
    return {split: (x[idx], y[idx]) for split, idx in parts.items()}


def _carve_val(images: Tensor, labels: Tensor, split: str) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_val = int(round(VAL_FRACTION * len(images)))
    idx = perm[len(images) - n_val :] if split == "val" else perm[: len(images) - n_val]
    return images[idx], labels[idx]


# The longest spike train an image task encodes (one image is MAX_STEPS x features values).
MAX_STEPS = 100_000


class _ImageTask(Task):
    """Shared sampling of (intensity or frame, label) pairs; subclasses fill `_data(split)`."""

    target = "last"
    loss_kind = "cross_entropy"
    primary_metric = "accuracy"
    higher_is_better = True
    output_size = 10

    def __init__(self, n_steps: int = 200, n_empty: int = 20, p_max: float = 0.25, seed: int = 0):
        n_steps, n_empty = check_int("n_steps", n_steps), check_int("n_empty", n_empty, 0)
        if n_steps + n_empty > MAX_STEPS:
            raise ValueError(f"n_empty + n_steps must be <= {MAX_STEPS}, got {n_empty + n_steps}")
        p_max = check_float("p_max", p_max, 0.0, 1.0)
        seed = check_int("seed", seed, 0)
        self.n_steps, self.n_empty, self.p_max, self.seed = n_steps, n_empty, p_max, seed
        self.seq_len = n_empty + n_steps
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _data(self, split: str) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def data(self, split: str) -> tuple[Tensor, Tensor]:
        check_split(split)
        if split not in self._cache:
            self._cache[split] = self._data(split)
        return self._cache[split]

    def _encode(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return rate_encode(x, self.n_steps, self.n_empty, self.p_max, generator=generator)

    def batch(
        self,
        batch_size: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        seq_len: int | None = None,
    ) -> Batch:
        generator = default_generator(self) if generator is None else generator
        x, y = self.data(split)
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        return Batch(self._encode(x[idx], generator), y[idx])

    def iter_split(
        self,
        split: str,
        batch_size: int,
        max_samples: int | None = None,
        seq_len: int | None = None,
    ) -> Iterator[Batch]:
        x, y = self.data(split)
        n = len(x) if max_samples is None else min(len(x), max_samples)
        generator = torch.Generator().manual_seed(split_seed(self.seed, split))
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield Batch(self._encode(x[start:stop], generator), y[start:stop])

    def chance(self) -> float:
        return 0.1


class SpikingDigits(_ImageTask):
    """scikit-learn 8×8 digits, rate-encoded (offline; shipped with scikit-learn).

    Inputs (B, n_empty + n_steps, 64) spikes; 10 classes read at the last step. Defaults follow
    the SRC paper's encoding (20 + 200 steps, p = 0.25 × intensity).
    """

    name = "spiking-digits"
    input_size = 64

    def _data(self, split: str) -> tuple[Tensor, Tensor]:
        return load_digits_images(seed=self.seed)[split]


class _FolderData:
    """For tasks read from a folder: `recorded_kwargs` pins a run to the folder's absolute path
    and the SHA-256 of its files (`self.data_dir`, `self.sha256`, None when files are missing)."""

    data_dir: Path
    sha256: str | None

    def recorded_kwargs(self) -> dict[str, Any]:
        if self.sha256 is None:
            return {}
        return {"data_dir": str(self.data_dir), "sha256": self.sha256}


class SpikingMNIST(_FolderData, _ImageTask):
    """MNIST or Fashion-MNIST (`kind`) read from IDX files in `data_dir`, rate-encoded.

    Inputs (B, n_empty + n_steps, 784) spikes; 10 classes read at the last step.
    """

    name = "spiking-mnist"
    input_size = 784

    def __init__(
        self,
        data_dir: str | Path,
        kind: str = "mnist",
        n_steps: int = 200,
        n_empty: int = 20,
        p_max: float = 0.25,
        seed: int = 0,
        sha256: str | None = None,
    ):
        super().__init__(n_steps, n_empty, p_max, seed)
        if kind not in ("mnist", "fashion-mnist"):
            raise ValueError(
                f"SpikingMNIST: unknown kind {kind!r}; expected 'mnist' or 'fashion-mnist'"
            )
        self.data_dir, self.kind = Path(data_dir).resolve(), kind
        # Recorded with a run (`recorded_kwargs`): eval and --resume refuse other data.
        self.sha256 = mnist_sha256(self.data_dir)
        check_recorded_digest("SpikingMNIST", self.data_dir, self.sha256, sha256)

    def _data(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "test":
            images, labels = load_mnist(self.data_dir, "test", self.kind)
        else:
            images, labels = _carve_val(*load_mnist(self.data_dir, "train", self.kind), split)
        return images.reshape(len(images), -1).float() / 255.0, labels


class NMNIST(_FolderData, _ImageTask):
    """N-MNIST event recordings from `data_dir` (tonic layout), binned into `n_time_bins`
    frames of 2×34×34 event counts (clipped to 1, so inputs stay spike-like)."""

    name = "nmnist"
    input_size = 2 * 34 * 34

    def __init__(
        self,
        data_dir: str | Path,
        n_time_bins: int = 100,
        seed: int = 0,
        sha256: str | None = None,
    ):
        super().__init__(n_steps=n_time_bins, n_empty=0, seed=seed)
        self.data_dir, self.n_time_bins = Path(data_dir).resolve(), n_time_bins
        # Recorded with a run (`recorded_kwargs`): eval and --resume refuse other data.
        self.sha256 = nmnist_sha256(self.data_dir)
        check_recorded_digest("NMNIST", self.data_dir, self.sha256, sha256)

    def _data(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "test":
            frames, labels = load_nmnist(self.data_dir, "test", self.n_time_bins)
        else:
            frames, labels = _carve_val(
                *load_nmnist(self.data_dir, "train", self.n_time_bins), split
            )
        return frames.clamp(max=1.0), labels

    def _encode(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x


__all__ = [
    "IDX_DTYPES",
    "NMNIST",
    "SpikingDigits",
    "SpikingMNIST",
    "load_digits_images",
    "load_mnist",
    "load_nmnist",
    "read_idx",
]
