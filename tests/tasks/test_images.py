import gzip
import struct

import numpy as np
import pytest
import torch

from memrnn.tasks.images import (
    NMNIST,
    SpikingDigits,
    SpikingMNIST,
    load_digits_images,
    load_mnist,
    load_nmnist,
    read_idx,
)

CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def _write_idx(path, array, gz=False):
    array = np.asarray(array)
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim])
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    _write_idx(path, array, gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, array)


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros((3, 2), np.uint8))
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(broken)


def test_load_mnist_from_files(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.ones((5, 28, 28), np.uint8), gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    images, labels = load_mnist(tmp_path, "test")
    assert images.shape == (5, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3, 4]
    task = SpikingMNIST(tmp_path, n_steps=10, n_empty=2)
    batch = task.batch(3, "test", torch.Generator().manual_seed(0))
    assert batch.x.shape == (3, 12, 784) and batch.y.shape == (3,)


def test_missing_data_errors_name_folder_and_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="train-images-idx3-ubyte .or train-images-idx3-ubyte.gz."
    ) as e:
        load_mnist(tmp_path, "train", kind="fashion-mnist")
    assert str(tmp_path.resolve()) in str(e.value) and "t10k-labels-idx1-ubyte" in str(e.value)
    with pytest.raises(FileNotFoundError, match="NMNIST/Train") as e:
        load_nmnist(tmp_path, "train")
    assert str(tmp_path.resolve()) in str(e.value)
    with pytest.raises(FileNotFoundError, match="NMNIST"):
        NMNIST(tmp_path).batch(2, "test")
    with pytest.raises(ValueError, match="kind"):
        load_mnist(tmp_path, kind="emnist")


def test_nmnist_records_the_sha256_of_its_files_and_refuses_other_data(tmp_path):
    for split, digit in (("Train", 0), ("Train", 1), ("Test", 3)):
        folder = tmp_path / "NMNIST" / split / str(digit)
        folder.mkdir(parents=True)
        (folder / "00001.bin").write_bytes(bytes([digit, 2, 3, 4, 5]))
    recorded = NMNIST(tmp_path).recorded_kwargs()
    assert recorded["data_dir"] == str(tmp_path.resolve()) and len(recorded["sha256"]) == 64
    NMNIST(**recorded)
    (tmp_path / "NMNIST" / "Test" / "3" / "00001.bin").write_bytes(bytes([9, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="NMNIST: the data in .* has changed"):
        NMNIST(**recorded)
    (tmp_path / "NMNIST" / "Test" / "3" / "00001.bin").write_bytes(bytes([3, 2, 3, 4, 5]))
    (tmp_path / "NMNIST" / "Train" / "1" / "00001.bin").rename(
        tmp_path / "NMNIST" / "Train" / "1" / "00002.bin"
    )
    with pytest.raises(ValueError, match="has changed"):
        NMNIST(**recorded)
    # A folder without the data records nothing (the loader says what is missing).
    assert NMNIST(tmp_path / "none").recorded_kwargs() == {}


def test_digits_split_and_task():
    data = load_digits_images()
    sizes = {k: len(v[0]) for k, v in data.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 359
    x, _ = data["train"]
    assert x.shape[1] == 64 and 0 <= x.min() and x.max() <= 1
    task = SpikingDigits(n_steps=30, n_empty=5)
    b1 = task.batch(4, "train", torch.Generator().manual_seed(3))
    b2 = task.batch(4, "train", torch.Generator().manual_seed(3))
    assert b1.x.shape == (4, 35, 64) and torch.equal(b1.x, b2.x) and torch.equal(b1.y, b2.y)
    n = sum(len(b.y) for b in task.iter_split("test", 100))
    assert n == 359 and task.chance() == 0.1
