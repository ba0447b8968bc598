"""Your own sequences from a file: the `arrays` task.

    memrnn train --model lru-small --task arrays --task.path data/my.npz --out runs/mine

Reads a `.npz` file (`x` (S, T, D) and `y`: (S,) int classes, or (S, T) / (S, T, O) float
per-step targets; optional `lengths` (S,); or the splits as `x_train`, `y_train`, `x_val`, ...)
or a CSV file with one row per step (columns `sequence`, optional `split`, `x...` inputs and
`y...` targets; see docs/own-data.md). Missing val/test splits are carved out of train with a
seed. The task records the file's absolute path and SHA-256 (`recorded_kwargs`), which the
training loop saves with the run, so that a later `eval` or `--resume` rebuilds the same task
and refuses to run on a file that has changed.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memrnn.tasks.base import (
    SPLITS,
    ArrayTask,
    Batch,
    check_float,
    check_int,
    check_split,
)
from memrnn.tasks.registry import register_task

KINDS = ("auto", "classification", "regression")
SUFFIXES = (".npz", ".csv")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Split:
    """One split: inputs (S, T, D) float32, targets, lengths (S,) int64 or None."""

    def __init__(self, x: Tensor, y: Tensor, lengths: Tensor | None) -> None:
        self.x, self.y, self.lengths = x, y, lengths

    def take(self, idx: Tensor | slice) -> _Split:
        lengths = None if self.lengths is None else self.lengths[idx]
        return _Split(self.x[idx], self.y[idx], lengths)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """split name (or "all") -> (x, y, lengths) arrays of a .npz file."""
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        out = {}
        if "x" in keys or "y" in keys:
            for key in ("x", "y"):
                if key not in keys:
                    raise ValueError(f"arrays: {path} has no array {key!r} (it has {sorted(keys)})")
            out["all"] = (data["x"], data["y"], data["lengths"] if "lengths" in keys else None)
        for split in SPLITS:
            if f"x_{split}" in keys or f"y_{split}" in keys:
                for key in (f"x_{split}", f"y_{split}"):
                    if key not in keys:
                        raise ValueError(f"arrays: {path} has {split} data but no array {key!r}")
                lengths = data[f"lengths_{split}"] if f"lengths_{split}" in keys else None
                out[split] = (data[f"x_{split}"], data[f"y_{split}"], lengths)
    if not out:
        raise ValueError(
            f"arrays: {path} holds neither x and y nor x_train and y_train (it has {sorted(keys)})"
        )
    if "all" in out and len(out) > 1:
        raise ValueError(f"arrays: {path} has both x/y and per-split arrays; keep one of the two")
    return out


def _read_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """split name (or "all") -> (x, y, lengths) of a CSV file with one row per step."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"arrays: {path} is empty; expected a header row") from None
        rows = [r for r in reader if r and any(cell.strip() for cell in r)]
    if "sequence" not in header:
        raise ValueError(f"arrays: {path} has no 'sequence' column (header: {header})")
    x_cols = [i for i, h in enumerate(header) if h.startswith("x")]
    y_cols = [i for i, h in enumerate(header) if h.startswith("y")]
    if not x_cols or not y_cols:
        raise ValueError(
            f"arrays: {path} needs input columns named x... and target columns named y... "
            f"(header: {header})"
        )
    seq_col = header.index("sequence")
    split_col = header.index("split") if "split" in header else None
    # Sequence label -> (split, rows of x, rows of y), in order of first appearance.
    seqs: dict[str, tuple[str, list[list[float]], list[list[float]]]] = {}
    last_label = None
    for number, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise ValueError(
                f"arrays: {path} line {number} has {len(row)} fields; the header has {len(header)}"
            )
        label = row[seq_col].strip()
        split = row[split_col].strip() if split_col is not None else "all"
        if split not in (*SPLITS, "all"):
            raise ValueError(
                f"arrays: {path} line {number}: split must be one of {SPLITS}, got {split!r}"
            )
        if label in seqs and label != last_label:
            raise ValueError(
                f"arrays: {path} line {number}: the rows of sequence {label!r} are not consecutive"
            )
        if label in seqs and seqs[label][0] != split:
            raise ValueError(f"arrays: {path} line {number}: sequence {label!r} changes split")
        try:
            xs = [float(row[i]) for i in x_cols]
            ys = [float(row[i]) for i in y_cols]
        except ValueError:
            raise ValueError(
                f"arrays: {path} line {number} has a value that is not a number"
            ) from None
        entry = seqs.setdefault(label, (split, [], []))
        entry[1].append(xs)
        entry[2].append(ys)
        last_label = label
    if not seqs:
        raise ValueError(f"arrays: {path} has a header but no rows")
    if split_col is not None and "all" in {s for s, _, _ in seqs.values()}:
        raise ValueError(f"arrays: {path} has rows with an empty split")
    groups: dict[str, list[tuple[list[list[float]], list[list[float]]]]] = {}
    for split, xs, ys in seqs.values():
        groups.setdefault(split, []).append((xs, ys))
    out = {}
    for split, items in groups.items():
        T = max(len(xs) for xs, _ in items)
        x = np.zeros((len(items), T, len(x_cols)), dtype=np.float32)
        y = np.zeros((len(items), T, len(y_cols)), dtype=np.float64)
        lengths = np.array([len(xs) for xs, _ in items], dtype=np.int64)
        for i, (xs, ys) in enumerate(items):
            x[i, : len(xs)] = xs
            y[i, : len(ys)] = ys
        out[split] = (x, y, lengths)
    return out


def _is_classification(y: np.ndarray, lengths: np.ndarray | None) -> bool:
    """Integer labels, one per sequence: (S,), or (S, T[, 1]) constant within each sequence."""
    if y.ndim == 1:
        return np.issubdtype(y.dtype, np.integer) or bool(np.all(np.mod(y, 1) == 0))
    if y.ndim == 3 and y.shape[-1] != 1:
        return False
    y = y.reshape(y.shape[0], -1)
    if not bool(np.all(np.mod(y, 1) == 0)):
        return False
    ends = y.shape[1] if lengths is None else lengths
    for i in range(y.shape[0]):
        valid = y[i, : int(ends if np.isscalar(ends) else ends[i])]
        if valid.size and not bool(np.all(valid == valid[0])):
            return False
    return True


@register_task("arrays")
class ArraysTask(ArrayTask):
    """Your own sequences from a .npz or CSV file (classification or per-step regression).

    Args:
        path: the .npz or .csv file (see the module docstring and docs/own-data.md).
        kind: "classification" (one integer class per sequence), "regression" (a float target
            per step), or "auto" (default: classification when the targets are one integer per
            sequence).
        val_fraction, test_fraction: share of the sequences carved out of train for a split the
            file does not give (default 0.1 each; 0 leaves that split out).
        seed: seed of that carving (default 0).
        sha256: the file's expected SHA-256; None (default) takes the file as it is now. A run
            records it, and a mismatch is a ValueError naming the path.

    Example:
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, x=np.zeros((20, 7, 3), "float32"), y=np.arange(20) % 2)
        >>> task = ArraysTask(str(path))
        >>> assert task.batch(4).x.shape == (4, 7, 3) and task.output_size == 2
    """

    def __init__(
        self,
        path: str,
        kind: str = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        sha256: str | None = None,
    ) -> None:
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"arrays: `path` must name a .npz or .csv file, got {path!r}")
        file = Path(path).expanduser().resolve()
        if file.suffix.lower() not in SUFFIXES:
            raise ValueError(f"arrays: {file} must be a .npz or .csv file")
        if not file.is_file():
            raise ValueError(f"arrays: data file {file} is missing")
        if kind not in KINDS:
            raise ValueError(f"arrays: `kind` must be one of {KINDS}, got {kind!r}")
        self.val_fraction = check_float("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
        self.seed = check_int("seed", seed, minimum=0)
        digest = file_sha256(file)
        if sha256 is not None and sha256 != digest:
            raise ValueError(
                f"arrays: data file {file} has changed since the run recorded it "
                f"(SHA-256 {digest[:12]}..., recorded {str(sha256)[:12]}...)"
            )
        self.path, self.sha256 = file, digest
        raw = _read_npz(file) if file.suffix.lower() == ".npz" else _read_csv(file)
        self._setup(raw, kind)

    # -- building the splits --------------------------------------------------------------------
    def _setup(
        self, raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]], kind: str
    ) -> None:
        first = raw.get("all", raw.get("train"))
        if first is None:
            raise ValueError(f"arrays: {self.path} has no train split (x_train, y_train)")
        for name, (x, y, lengths) in raw.items():
            self._check_arrays(name, x, y, lengths)
        if kind == "auto":
            kind = (
                "classification"
                if all(_is_classification(y, n) for _, y, n in raw.values())
                else "regression"
            )
        self.kind = kind
        # Instance attributes: what the model builder and the loss read from a task.
        self.target = "last" if kind == "classification" else "sequence"
        self.loss_kind = "cross_entropy" if kind == "classification" else "mse"
        self.primary_metric = "accuracy" if kind == "classification" else "mse"
        self.higher_is_better = kind == "classification"
        splits = {name: self._to_split(name, *arrays) for name, arrays in raw.items()}
        if "all" in splits:
            splits = self._carve(splits.pop("all"), ("test", "val"))
        else:
            missing = tuple(s for s in ("test", "val") if s not in splits)
            if missing:
                splits.update(self._carve(splits.pop("train"), missing))
        self._splits = splits
        widths = {int(s.x.shape[-1]) for s in splits.values()}
        if len(widths) != 1:
            raise ValueError(f"arrays: the splits of {self.path} have different widths {widths}")
        self.input_size = widths.pop()
        self.seq_len = max(int(s.x.shape[1]) for s in splits.values())
        if kind == "classification":
            self.output_size = int(max(int(s.y.max()) for s in splits.values() if len(s))) + 1
        else:
            self.output_size = int(splits["train"].y.shape[-1])

    def _check_arrays(
        self, name: str, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None
    ) -> None:
        where = f"arrays: {self.path}" + ("" if name == "all" else f" ({name})")
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{where}: x must have shape (S, T, D) with S, T >= 1, got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{where}: x must hold numbers, got dtype {x.dtype}")
        if y.shape[0] != x.shape[0] or y.ndim not in (1, 2, 3):
            raise ValueError(
                f"{where}: y must have shape (S,), (S, T) or (S, T, O) with S = {x.shape[0]}, "
                f"got {y.shape}"
            )
        if y.ndim >= 2 and y.shape[1] != x.shape[1]:
            raise ValueError(f"{where}: per-step y must have T = {x.shape[1]} steps, got {y.shape}")
        if lengths is not None and (
            lengths.shape != (x.shape[0],)
            or not np.issubdtype(lengths.dtype, np.integer)
            or lengths.min() < 1
            or lengths.max() > x.shape[1]
        ):
            raise ValueError(
                f"{where}: lengths must be S = {x.shape[0]} integers in [1, {x.shape[1]}]"
            )

    def _to_split(
        self, name: str, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None
    ) -> _Split:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        n = None if lengths is None else torch.as_tensor(lengths.astype(np.int64))
        if n is not None and bool((n == x.shape[1]).all()):
            # No padding: the batches carry no lengths, as for any fixed-length task.
            n = None
        if self.kind == "classification":
            if y.ndim > 1:
                # One class per sequence, read at its last valid step.
                flat = y.reshape(y.shape[0], y.shape[1])
                last = (n - 1) if n is not None else torch.full((y.shape[0],), y.shape[1] - 1)
                y = flat[np.arange(y.shape[0]), last.numpy()]
            if not bool(np.all(np.mod(y, 1) == 0)) or y.min() < 0:
                raise ValueError(
                    f"arrays: {self.path}: classification targets must be integers >= 0"
                )
            yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        else:
            if y.ndim == 1:
                raise ValueError(
                    f"arrays: {self.path}: regression targets need one value per step, "
                    f"(S, T) or (S, T, O); got {y.shape}"
                )
            y = y if y.ndim == 3 else y[..., None]
            yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
        return _Split(xt, yt, n)

    def _carve(self, data: _Split, wanted: tuple[str, ...]) -> dict[str, _Split]:
        """Seeded split of `data` into train and the `wanted` splits."""
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed))
        out, start = {}, 0
        for split in wanted:
            n = int(round(fractions[split] * len(data)))
            if n:
                out[split] = data.take(perm[start : start + n].sort().values)
            start += n
        if start >= len(data):
            raise ValueError(
                f"arrays: {self.path} has {len(data)} sequences, too few to carve "
                f"{', '.join(wanted)} out of train; lower val_fraction / test_fraction"
            )
        out["train"] = data.take(perm[start:].sort().values)
        return out

    def recorded_kwargs(self) -> dict[str, Any]:
        """The arguments that pin this task to its file, saved with a run."""
        return {"path": str(self.path), "sha256": self.sha256}

    def _split(self, split: str) -> _Split:
        data = self._splits.get(check_split(split))
        if data is None:
            raise ValueError(
                f"arrays: {self.path} has no {split!r} split; give x_{split}/y_{split} or set "
                f"{split}_fraction > 0"
            )
        return data

    def _split_data(self, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
        data = self._split(split)
        return data.x, data.y, data.lengths

    def _no_seq_len(self, seq_len: int | None) -> None:
        if seq_len is not None and seq_len != self.seq_len:
            raise ValueError(
                f"seq_len cannot be changed for arrays: the lengths come from {self.path}"
            )

    def _to_batch(self, x: Tensor, y: Tensor, lengths: Tensor | None) -> Batch:
        return Batch(x, y, None, lengths)

    def chance(self) -> float:
        if self.kind == "classification":
            return 1.0 / self.output_size
        # Predicting 0 everywhere: the mean square of the targets.
        y = self._split("train").y
        return float((y.float() ** 2).mean())


__all__ = ["ArraysTask", "file_sha256"]
