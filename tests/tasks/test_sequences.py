"""Sequence tasks: digits, MNIST-1D, (p)sMNIST from IDX files, Mackey-Glass, char text."""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from memrnn.tasks import create_task
from memrnn.tasks import sequences as seq
from memrnn.tasks.base import SPLITS


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u.x, v.x) and torch.equal(u.y, v.y)


# ---------------------------------------------------------------- sklearn digits


def test_digits_splits_shapes_and_determinism() -> None:
    task = create_task("digits")
    sizes = {s: task.split_size(s) for s in SPLITS}
    assert sum(sizes.values()) == 1797 and sizes["test"] == round(0.2 * 1797)
    for split in SPLITS:
        b = task.batch(5, split, gen())
        assert b.x.shape == (5, 64, 1) and b.x.dtype == torch.float32
        assert b.y.shape == (5,) and b.y.dtype == torch.long
        assert 0 <= float(b.x.min()) and float(b.x.max()) <= 1
    assert torch.equal(task.batch(7, "train", gen(2)).x, task.batch(7, "train", gen(2)).x)
    again = create_task("digits")
    assert_same(list(task.iter_split("val", 50)), list(again.iter_split("val", 50)))
    assert sum(len(b.y) for b in task.iter_split("test", 100)) == sizes["test"]
    assert sum(len(b.y) for b in task.iter_split("test", 100, max_samples=150)) == 150
    # Row-major pixels: the test set is a subset of load_digits rows.
    from sklearn.datasets import load_digits

    rows = {tuple(r) for r in (load_digits().data / 16.0).astype(np.float32)}
    assert all(tuple(r) in rows for r in task.batch(20, "test", gen()).x[..., 0].numpy())
    # Uniform logits: argmax ties give class 0, right about 1 time in 10.
    acc = [
        task.metrics(torch.zeros(len(b.y), 10), b)["accuracy"]
        for b in task.iter_split("train", 10_000)
    ]
    assert acc[0] == pytest.approx(task.chance(), abs=0.03)


def test_digits_errors() -> None:
    task = create_task("digits")
    with pytest.raises(ValueError, match="seq_len cannot be overridden"):
        task.batch(2, "test", seq_len=32)
    with pytest.raises(ValueError, match="test_fraction must be a number"):
        create_task("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="has no 'val' split; set val_fraction > 0"):
        create_task("digits", val_fraction=0.0).batch(2, "val")


# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d(tmp_path: Path) -> None:
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    seq._MNIST1D_CACHE.clear()
    task = create_task("mnist1d", cache_dir=str(tmp_path))
    # Generation must leave numpy's global generator as it was.
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    assert (tmp_path / "mnist1d_default.npz").exists()
    assert {s: task.split_size(s) for s in SPLITS} == {"train": 3600, "val": 400, "test": 1000}
    b = task.batch(6, "test", gen())
    assert b.x.shape == (6, 40, 1) and b.y.shape == (6,) and b.x.dtype == torch.float32
    assert set(torch.cat([b.y for b in task.iter_split("train", 4000)]).tolist()) == set(range(10))
    # From the on-disk cache, the same samples.
    seq._MNIST1D_CACHE.clear()
    again = create_task("mnist1d", cache_dir=str(tmp_path))
    assert_same(list(task.iter_split("val", 400)), list(again.iter_split("val", 400)))
    with pytest.raises(ValueError, match="seq_len cannot be overridden"):
        task.batch(2, seq_len=80)


def test_mnist1d_records_the_sha256_of_its_cache_and_refuses_other_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.normal(size=(20, 40)).astype("float32"),
        "y": np.arange(20) % 10,
        "x_test": rng.normal(size=(10, 40)).astype("float32"),
        "y_test": np.arange(10),
    }
    np.savez(tmp_path / "mnist1d_default.npz", **arrays)
    task = create_task("mnist1d", cache_dir=str(tmp_path), val_fraction=0.5)
    recorded = task.recorded_kwargs()
    assert len(recorded["sha256"]) == 64
    assert create_task("mnist1d", cache_dir=str(tmp_path), **recorded).split_size("test") == 10
    arrays["x_test"][3, 7] += 1.0
    np.savez(tmp_path / "mnist1d_default.npz", **arrays)
    with pytest.raises(ValueError, match=r"mnist1d: the data in .*mnist1d_default.npz.* changed"):
        create_task("mnist1d", cache_dir=str(tmp_path), **recorded)
    assert create_task("mnist1d", cache_dir=str(tmp_path)).recorded_kwargs() != recorded
    (tmp_path / "mnist1d_default.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ValueError, match="not a readable .npz"):
        create_task("mnist1d", cache_dir=str(tmp_path))


# ---------------------------------------------------------------- (p)sMNIST


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n = len(images)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x00000803, n, 28, 28) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes()
    )


def has_load_mnist() -> bool:
    if importlib.util.find_spec("memrnn.tasks.images") is None:
        return False
    from memrnn.tasks import images

    return hasattr(images, "load_mnist")


needs_loader = pytest.mark.skipif(not has_load_mnist(), reason="memrnn.tasks.images.load_mnist")


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_idx(tmp_path, "train", rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10)
    write_idx(tmp_path, "t10k", rng.integers(0, 256, (12, 28, 28)), np.arange(12) % 10)
    return tmp_path


@needs_loader
def test_pixel_mnist(mnist_dir: Path) -> None:
    from memrnn.tasks.images import load_mnist

    images, labels = load_mnist(mnist_dir, "test", kind="mnist")
    s = create_task("smnist", data_dir=str(mnist_dir), val_fraction=0.25)
    ps = create_task("psmnist", data_dir=str(mnist_dir), val_fraction=0.25, black_pixels=16)
    assert {k: s.split_size(k) for k in SPLITS} == {"train": 30, "val": 10, "test": 12}
    (bs,) = list(s.iter_split("test", 12))
    (bp,) = list(ps.iter_split("test", 12))
    assert bs.x.shape == (12, 784, 1) and bp.x.shape == (12, 800, 1)
    assert torch.allclose(bs.x[..., 0], torch.as_tensor(images.reshape(12, -1)).float() / 255)
    assert torch.equal(bs.y, torch.as_tensor(labels))
    assert torch.equal(bp.x[:, :784, 0], bs.x[:, ps.permutation, 0])
    assert bp.x[:, 784:].eq(0).all() and not torch.equal(ps.permutation, torch.arange(784))
    assert ps.seq_len == 800 and s.seq_len == 784
    sub = create_task("smnist", data_dir=str(mnist_dir), subset=8, val_fraction=0.0)
    assert sub.split_size("train") == 8 and sub.split_size("test") == 8
    with pytest.raises(ValueError, match="seq_len cannot be overridden"):
        s.batch(2, seq_len=100)


@needs_loader
def test_pixel_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_task("psmnist", data_dir=str(tmp_path / "nowhere"))


def test_pixel_mnist_requires_data_dir() -> None:
    with pytest.raises(ValueError, match="requires argument\\(s\\): data_dir"):
        create_task("psmnist")
    with pytest.raises(ValueError, match="black_pixels must be an integer >= 0"):
        create_task("smnist", data_dir="x", black_pixels=-1)


# ---------------------------------------------------------------- Mackey-Glass


def test_mackey_glass_series_follows_delay_equation() -> None:
    # One point per grid step (dt = 0.1): central differences must match the right-hand side.
    x = seq.mackey_glass(1500, substeps=10, sample_every=1, washout=50, seed=3)
    lag = 170
    i = np.arange(lag, len(x) - 1)
    deriv = (x[i + 1] - x[i - 1]) / 0.2
    rhs = 0.2 * x[i - lag] / (1 + x[i - lag] ** 10) - 0.1 * x[i]
    assert np.abs(deriv - rhs).max() < 1e-3
    y = seq.mackey_glass(3000)
    assert np.isfinite(y).all() and 0.2 < y.min() and y.max() < 1.6 and y.std() > 0.1
    with pytest.raises(ValueError, match="tau \\* substeps must be a positive integer"):
        seq.mackey_glass(10, tau=17.05)


def test_mackey_glass_task() -> None:
    task = create_task("mackey-glass", seq_len=64, horizon=15, n_points=3000)
    for split in SPLITS:
        b = task.batch(8, split, gen())
        assert b.x.shape == b.y.shape == (8, 64, 1) and b.x.dtype == torch.float32
        # The target is the input 15 steps later.
        assert torch.equal(b.y[:, :-15], b.x[:, 15:])
    assert task.batch(2, "test", gen(), seq_len=200).x.shape == (2, 200, 1)
    assert torch.equal(task.batch(4, "val", gen(5)).x, task.batch(4, "val", gen(5)).x)
    assert_same(list(task.iter_split("test", 100, 300)), list(task.iter_split("test", 100, 300)))
    train = task.series[: int(0.7 * 3000)]
    assert float(train.mean()) == pytest.approx(0, abs=1e-4)
    assert float(train.std()) == pytest.approx(1, abs=1e-3)
    b = task.batch(512, "train", gen())
    nrmse = task.metrics(torch.full_like(b.y, float(b.y.mean())), b)["nrmse"]
    assert nrmse == pytest.approx(task.chance(), abs=1e-4)
    assert task.metrics(b.y, b)["nrmse"] == 0
    with pytest.raises(ValueError, match="seq_len \\+ horizon must be <= 300"):
        task.batch(2, "train", seq_len=290)


# ---------------------------------------------------------------- text


def test_text(tmp_path: Path) -> None:
    text = "".join(f"line {i}: the quick brown fox jumps.\n" for i in range(60))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    task = create_task("text", path=str(path), seq_len=16)
    assert task.input_kind == "tokens" and task.input_size == len(set(text))
    assert task.decode(task.encode(text)) == text
    for split in SPLITS:
        b = task.batch(4, split, gen())
        assert b.x.shape == b.y.shape == (4, 16) and b.x.dtype == b.y.dtype == torch.long
        assert torch.equal(b.x[:, 1:], b.y[:, :-1])
        for row_x, row_y in zip(b.x, b.y, strict=True):
            assert (task.decode(row_x) + task.decode(row_y[-1:])) in text
    assert task.batch(2, "train", gen(), seq_len=40).x.shape == (2, 40)
    windows = list(task.iter_split("test", 3))
    joined = "".join(task.decode(r) for b in windows for r in b.x)
    test_part = task.decode(task.parts["test"])
    assert test_part.startswith(joined) and len(joined) > len(test_part) - 33
    assert_same(windows, list(task.iter_split("test", 3)))
    m = task.metrics(torch.zeros(*b.y.shape, task.output_size), b)
    assert m["bpc"] == pytest.approx(task.chance()) == pytest.approx(math.log2(task.input_size))
    with pytest.raises(FileNotFoundError, match="no text file at .*missing.txt"):
        create_task("text", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="seq_len must be <="):
        create_task("text", path=str(path), seq_len=500)
