"""Your own sequences from a file: the `arrays` task.

    memrnn train --model lru-small --task arrays --task.path data/my.npz --out runs/mine

Reads a `.npz` file (`x` (S, T, D), or (S, T) for one channel, and `y`: (S,) labels, or
(S, T) / (S, T, O) float per-step targets; optional `lengths` (S,); or the splits as
`x_train`, `y_train`, `x_val`, ...) or a CSV file with one row per step (columns `sequence`,
optional `split`, `x...` inputs and `y...` targets; see docs/own-data.md).

Labels may be any values, integers or strings: the classes are the distinct labels of all
splits in sorted order (`classes`), so 1-based labels or labels such as 1e9 make exactly as
many classes as there are labels. Missing val/test splits are carved out of train with a
seed, stratified by class for classification (each class keeps its share in every split); a
carved split that would be empty, or hold fewer sequences than there are classes, is a
ValueError at build. `normalize="standardize"` rescales every input channel by the mean and
standard deviation of the training split (over valid steps). The task records the file's
absolute path and SHA-256, the classes and the normalisation statistics (`recorded_kwargs`),
which the training loop saves with the run, so that a later `eval`, `predict` or `--resume`
rebuilds the same task, scores and prints the same labels, normalises new inputs alike, and
refuses to run on a file that has changed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from memrnn.tasks.base import (
    SPLITS,
    ArrayTask,
    Batch,
    check_float,
    check_int,
    check_split,
    cross_entropy_loss,
)
from memrnn.tasks.registry import register_task

KINDS = ("auto", "classification", "regression")
SUFFIXES = (".npz", ".csv")
# The file in every checkpoint of a run on this task that holds its input normalisation and
# classes (see `ArraysTask.checkpoint_files`).
INPUTS = "inputs.json"
NORMALIZE = ("none", "standardize")
CLASS_WEIGHTS = ("none", "balanced")
# A channel whose standard deviation is below this is only centred, not scaled.
MIN_STD = 1e-8
# The largest input magnitude the model's float32 inputs hold.
FLOAT32_MAX = float(np.finfo(np.float32).max)


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


class _NpzArrays(dict):
    """The arrays of a .npz file, read and checked (see `_open_npz`)."""

    @property
    def files(self) -> list[str]:
        return list(self)


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator[_NpzArrays]:
    """Every array of the .npz file `path`, each header checked before its data is read: an
    empty, truncated or damaged file, a pickled (object) member or a header that promises
    more data than its member holds is a ValueError naming the file and the member."""
    import zipfile

    arrays = _NpzArrays()
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = info.filename
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    if dtype.hasobject:
                        raise ValueError(
                            "it holds Python objects (a pickle), which are never loaded; "
                            "save arrays of numbers or strings"
                        )
                    needed = math.prod(shape) * dtype.itemsize
                    if needed > info.file_size:
                        raise ValueError(
                            f"its header promises {needed} bytes of data and it has at most "
                            f"{info.file_size} (truncated or damaged)"
                        )
                with archive.open(info) as f:
                    name = member[:-4] if member.endswith(".npy") else member
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as err:
        what = f" (member {member!r})" if member else ""
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(
            f"arrays: {path} is not a readable .npz file{what}: {reason}; write it with "
            "numpy.savez (see docs/own-data.md)"
        ) from None
    yield arrays


def _read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """split name (or "all") -> (x, y, lengths) arrays of a .npz file."""
    with _open_npz(path) as data:
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


def _read_csv(
    path: Path, need_targets: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """split name (or "all") -> (x, y, lengths) of a CSV file with one row per step (y of
    width 0 when the file has no target columns and `need_targets` is False)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
            rows = [r for r in reader if r and any(cell.strip() for cell in r)]
        except StopIteration:
            raise ValueError(f"arrays: {path} is empty; expected a header row") from None
        except (csv.Error, UnicodeDecodeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise ValueError(
                f"arrays: {path} line {reader.line_num} cannot be read as UTF-8 CSV ({reason})"
            ) from None
    if "sequence" not in header:
        raise ValueError(f"arrays: {path} has no 'sequence' column (header: {header})")
    x_cols = [i for i, h in enumerate(header) if h.startswith("x")]
    y_cols = [i for i, h in enumerate(header) if h.startswith("y")]
    if not x_cols or (not y_cols and need_targets):
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
        column = None
        try:
            xs = []
            for column in x_cols:
                xs.append(float(row[column]))
                if not math.isfinite(xs[-1]):
                    raise ValueError("not finite")
                if abs(xs[-1]) > FLOAT32_MAX:
                    raise ValueError("beyond float32")
            ys = []
            for column in y_cols:
                ys.append(_number_or_label(row[column]))
                if isinstance(ys[-1], float) and not math.isfinite(ys[-1]):
                    raise ValueError("not finite")
        except ValueError as err:
            what = {"not finite": "a finite number", "beyond float32": "a number float32 holds"}
            what = what.get(str(err), "a number")
            raise ValueError(
                f"arrays: {path} line {number}, field {header[column]!r}: "
                f"{row[column].strip()[:40]!r} is not {what}"
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
        labels = any(isinstance(v, str) for _, ys in items for row in ys for v in row)
        y = np.zeros((len(items), T, len(y_cols)), dtype=object if labels else np.float64)
        lengths = np.array([len(xs) for xs, _ in items], dtype=np.int64)
        for i, (xs, ys) in enumerate(items):
            x[i, : len(xs)] = xs
            y[i, : len(ys)] = ys
        out[split] = (x, y, lengths)
    return out


def _number_or_label(text: str) -> float | str:
    """A CSV target cell: a number, or else the (stripped) text as a class label."""
    try:
        return float(text)
    except ValueError:
        label = text.strip()
        if not label:
            raise
        return label


def _is_labels(y: np.ndarray) -> bool:
    """Whether `y` holds labels that are not numbers (strings, bools, objects)."""
    return not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating))


def _whole(y: np.ndarray) -> bool:
    """Whether every value of numeric `y` is a whole number."""
    return np.issubdtype(y.dtype, np.integer) or bool(np.all(np.mod(y, 1) == 0))


def _is_classification(y: np.ndarray, lengths: np.ndarray | None) -> bool:
    """One label per sequence: (S,) strings or whole numbers, or (S, T[, 1]) constant within
    each sequence."""
    labels = _is_labels(y)
    if y.ndim == 1:
        return labels or _whole(y)
    if y.ndim == 3 and y.shape[-1] != 1:
        return False
    y = y.reshape(y.shape[0], -1)
    if not labels and not _whole(y):
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
            file does not give (default 0.1 each; 0 leaves that split out: with no val split a
            run trains without validation and keeps its last checkpoint). Classification
            splits are stratified by class.
        seed: seed of that carving (default 0).
        normalize: "none" (default) or "standardize": each input channel minus its mean,
            divided by its standard deviation, both taken over the valid steps of the
            training split and applied to every split (and, through the run, to what eval,
            predict and stream read).
        class_weights: "none" (default) or "balanced": the training loss weighs each class
            by S / (K * S_k) (S training sequences, K classes, S_k of class k).
        sha256: the file's expected SHA-256; None (default) takes the file as it is now. A run
            records it, and a mismatch is a ValueError naming the path.
        classes, mean, std, stratify: recorded by a run (see `recorded_kwargs`) so that its
            task is rebuilt alike; leave them unset.

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
        normalize: str = "none",
        class_weights: str = "none",
        sha256: str | None = None,
        classes: list[Any] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        stratify: bool | None = None,
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
        if normalize not in NORMALIZE:
            raise ValueError(f"arrays: `normalize` must be one of {NORMALIZE}, got {normalize!r}")
        if class_weights not in CLASS_WEIGHTS:
            raise ValueError(
                f"arrays: `class_weights` must be one of {CLASS_WEIGHTS}, got {class_weights!r}"
            )
        if classes is not None and (not isinstance(classes, list) or not classes):
            raise ValueError(f"arrays: `classes` must be a non-empty list, got {classes!r}")
        self.normalize, self.class_weights = normalize, class_weights
        # A run recorded before classes and stratified carving were recorded (it gives its
        # file's checksum but no classes) is rebuilt as it was built then.
        legacy = sha256 is not None and classes is None
        self.stratify = (not legacy) if stratify is None else bool(stratify)
        self._given_classes = classes
        self._legacy_labels = legacy
        self._given_stats = (mean, std)
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
        # (S, T) inputs are one channel.
        raw = {
            name: (x[..., None] if x.ndim == 2 else x, y, lengths)
            for name, (x, y, lengths) in raw.items()
        }
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
        self.classes: list[Any] | None = None
        if kind == "classification":
            raw = self._map_labels(raw)
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
            self.output_size = len(self.classes)
        else:
            self.output_size = int(splits["train"].y.shape[-1])
        self.mean = self.std = None
        if self.normalize == "standardize":
            self._standardize(splits)
        self.weights = None
        if self.class_weights == "balanced" and kind != "classification":
            raise ValueError(
                f"arrays: class_weights 'balanced' weighs classes, and {self.path} holds "
                "regression targets; drop --task.class_weights"
            )
        if self.class_weights == "balanced":
            counts = torch.bincount(splits["train"].y, minlength=self.output_size).double()
            self.weights = (counts.sum() / (self.output_size * counts.clamp(min=1))).float()

    def _check_arrays(
        self, name: str, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None
    ) -> None:
        where = f"arrays: {self.path}" + ("" if name == "all" else f" ({name})")
        _check_x(where, x)
        if y.ndim not in (1, 2, 3) or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: y must have shape (S,), (S, T) or (S, T, O) with S = {x.shape[0]}, "
                f"got {y.shape}"
            )
        if y.ndim >= 2 and y.shape[1] != x.shape[1]:
            raise ValueError(f"{where}: per-step y must have T = {x.shape[1]} steps, got {y.shape}")
        _check_finite(where, "y", y)
        _check_lengths(where, x, lengths)

    def _to_split(
        self, name: str, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None
    ) -> _Split:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        n = None if lengths is None else torch.as_tensor(lengths.astype(np.int64))
        if n is not None and bool((n == x.shape[1]).all()):
            # No padding: the batches carry no lengths, as for any fixed-length task.
            n = None
        if self.kind == "classification":
            # Class indices already (`_map_labels`).
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

    def _map_labels(
        self, raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Each split's labels, one per sequence (read at its last valid step), as indices
        into `self.classes`: the distinct labels of every split, sorted (numbers before text),
        or the classes a run recorded."""
        labels = {}
        for name, (_, y, lengths) in raw.items():
            if y.ndim > 1:
                flat = y.reshape(y.shape[0], y.shape[1])
                last = y.shape[1] - 1 if lengths is None else lengths.astype(np.int64) - 1
                y = flat[np.arange(y.shape[0]), last]
            labels[name] = [_label(v, self.path) for v in y.tolist()]
        found = sorted({v for values in labels.values() for v in values}, key=_label_order)
        if self._given_classes is not None:
            classes = list(self._given_classes)
            unknown = [v for v in found if v not in set(classes)]
            if unknown:
                raise ValueError(
                    f"arrays: {self.path} has labels {unknown[:5]} that are not among the "
                    f"classes the run recorded ({classes[:10]})"
                )
        elif self._legacy_labels:
            # The labels were the class indices themselves.
            if any(not isinstance(v, int) or v < 0 for v in found):
                raise ValueError(
                    f"arrays: {self.path}: classification targets must be integers >= 0"
                )
            classes = list(range(max(found) + 1))
        else:
            classes = found
        self.classes = classes
        index = {v: i for i, v in enumerate(classes)}
        return {
            name: (x, np.array([index[v] for v in labels[name]], dtype=np.int64), lengths)
            for name, (x, _, lengths) in raw.items()
        }

    def _carve(self, data: _Split, wanted: tuple[str, ...]) -> dict[str, _Split]:
        """Seeded split of `data` into train and the `wanted` splits, stratified by class for
        classification; ValueError when a split would be empty or too small for its classes."""
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        n = len(data)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        if not self.stratify or self.kind != "classification":
            return self._carve_at_random(data, wanted, perm)
        # Class by class, each class's sequences in a seeded random order.
        rest = perm[torch.sort(data.y[perm], stable=True).indices].numpy()
        n_classes = len(self.classes)
        out = {}
        for split in wanted:
            fraction = fractions[split]
            if fraction == 0:
                continue
            k = int(round(fraction * n))
            if k == 0 or k < n_classes:
                self._too_small(split, fraction, n, k, n_classes)
            if k >= len(rest):
                raise ValueError(
                    f"arrays: {self.path} has {n} sequences, too few to carve "
                    f"{', '.join(wanted)} out of train; lower val_fraction / test_fraction"
                )
            take = _stratified_take(data.y.numpy()[rest], k)
            out[split] = data.take(torch.as_tensor(np.sort(rest[take])))
            rest = rest[~take]
        out["train"] = data.take(torch.as_tensor(np.sort(rest)))
        counts = np.bincount(out["train"].y.numpy(), minlength=n_classes)
        if (counts == 0).any():
            absent = self.classes[int(np.flatnonzero(counts == 0)[0])]
            total = int((data.y == self.classes.index(absent)).sum())
            raise ValueError(
                f"arrays: class {absent!r} has {total} sequence(s) in {self.path}, too few to "
                f"keep one for training after carving {' and '.join(wanted)}; give more "
                "sequences of it, or lower val_fraction / test_fraction"
            )
        return out

    def _too_small(self, split: str, fraction: float, n: int, k: int, n_classes: int) -> None:
        name = {"val": "validation", "test": "test"}[split]
        what = f"the {name} split of {fraction:.0%} of {n} sequence{'s' * (n != 1)}"
        need = max(n_classes, 1) / n
        hint = "give more sequences"
        if need < 0.5:
            hint = f"give --task.{split}_fraction {math.ceil(need * 100) / 100:g} or more sequences"
        if k == 0:
            raise ValueError(
                f"arrays: {what} is empty; {hint} (--task.{split}_fraction 0 leaves it out)"
            )
        raise ValueError(
            f"arrays: {what} holds {k}, fewer than the {n_classes} classes, so it cannot hold "
            f"every class; {hint}"
        )

    def _carve_at_random(
        self, data: _Split, wanted: tuple[str, ...], perm: Tensor
    ) -> dict[str, _Split]:
        """The unstratified carving (regression, and runs recorded before stratification)."""
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        out, start = {}, 0
        for split in wanted:
            n = int(round(fractions[split] * len(data)))
            if n:
                out[split] = data.take(perm[start : start + n].sort().values)
            elif fractions[split] > 0 and self.stratify:
                self._too_small(split, fractions[split], len(data), 0, 1)
            start += n
        if start >= len(data):
            raise ValueError(
                f"arrays: {self.path} has {len(data)} sequences, too few to carve "
                f"{', '.join(wanted)} out of train; lower val_fraction / test_fraction"
            )
        out["train"] = data.take(perm[start:].sort().values)
        return out

    def _standardize(self, splits: dict[str, _Split]) -> None:
        """Every split's inputs standardised per channel with the training split's mean and
        standard deviation over valid steps (or the recorded ones); padding stays 0."""
        given_mean, given_std = self._given_stats
        if given_mean is not None and given_std is not None:
            mean = torch.as_tensor(given_mean, dtype=torch.float64)
            std = torch.as_tensor(given_std, dtype=torch.float64)
            if mean.shape != (self.input_size,) or std.shape != (self.input_size,):
                raise ValueError(
                    f"arrays: the recorded mean and std must hold {self.input_size} values "
                    "(one per input channel)"
                )
        else:
            train = splits["train"]
            values = train.x[_valid(train.x, train.lengths)].double()  # (M, D)
            mean = values.mean(0)
            std = values.std(0, unbiased=False)
            std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        for split in splits.values():
            split.x = standardize(split.x, mean.tolist(), std.tolist(), split.lengths)
        self.mean, self.std = mean.tolist(), std.tolist()

    def recorded_kwargs(self) -> dict[str, Any]:
        """The arguments that pin this task to its file, its classes and its input
        normalisation, saved with a run."""
        out: dict[str, Any] = {"path": str(self.path), "sha256": self.sha256}
        out["stratify"] = self.stratify
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.mean is not None:
            out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def has_split(self, split: str) -> bool:
        return check_split(split) in self._splits

    def checkpoint_files(self) -> dict[str, str]:
        """inputs.json: the input normalisation (mean, std per channel) and the classes."""
        inputs: dict[str, Any] = {"normalize": self.normalize, "input_size": self.input_size}
        if self.mean is not None:
            inputs["mean"], inputs["std"] = list(self.mean), list(self.std)
        if self.classes is not None:
            inputs["classes"] = list(self.classes)
        return {INPUTS: json.dumps(inputs)}

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        if self.weights is None:
            return super().loss(output, batch)
        weight = self.weights.to(output.device)
        return cross_entropy_loss(output, batch, self.target, weight=weight)

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


def _check_x(where: str, x: np.ndarray) -> None:
    """ValueError starting with `where` unless x is (S, T, D) finite numbers, S, T >= 1."""
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where}: x must have shape (S, T, D) with S, T >= 1, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{where}: x must hold numbers, got dtype {x.dtype}")
    _check_finite(where, "x", x, float32=True)


def _check_finite(where: str, name: str, values: np.ndarray, float32: bool = False) -> None:
    """ValueError starting with `where` naming the first value of float `values` that is not
    finite, or (`float32`) that float32, what the model reads, cannot hold."""
    if not np.issubdtype(values.dtype, np.floating):
        return
    if not np.isfinite(values).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise ValueError(
            f"{where}: {name} holds a non-finite value ({values[index]}) at "
            f"index {list(index)} (sequence, step, channel); every value must be finite"
        )
    limit = FLOAT32_MAX
    if float32 and values.size and values.itemsize > 4 and float(np.abs(values).max()) > limit:
        index = tuple(int(i) for i in np.argwhere(np.abs(values) > limit)[0])
        raise ValueError(
            f"{where}: {name} holds a value too large for float32 ({values[index]:g}) at "
            f"index {list(index)} (sequence, step, channel); every value must be below "
            f"{limit:.3g} in magnitude"
        )


def _check_lengths(where: str, x: np.ndarray, lengths: np.ndarray | None) -> None:
    """ValueError starting with `where` unless `lengths` is None or S integers in [1, T]."""
    if lengths is not None and (
        lengths.shape != (x.shape[0],)
        or not np.issubdtype(lengths.dtype, np.integer)
        or lengths.min() < 1
        or lengths.max() > x.shape[1]
    ):
        raise ValueError(f"{where}: lengths must be S = {x.shape[0]} integers in [1, {x.shape[1]}]")


def _label(value: Any, path: Path) -> int | float | str:
    """A label as a plain value: whole numbers as int, other numbers as float, text as str."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"arrays: {path} has a label that is not finite ({value!r})")
        return int(number) if number == int(number) else number
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)


def _label_order(value: int | float | str) -> tuple[int, Any]:
    return (1, value) if isinstance(value, str) else (0, value)


def _stratified_take(classes: np.ndarray, k: int) -> np.ndarray:
    """A mask choosing `k` positions of class-sorted `classes`, each class's share
    k * S_c / S by largest remainders, one kept per class where possible; the first positions
    of each class (which are in random order) are taken."""
    values, starts, counts = np.unique(classes, return_index=True, return_counts=True)
    quota = k * counts / counts.sum()
    take = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    take = np.maximum(take, 0)
    remainder = quota - take
    for room in (counts - 1, counts):
        for c in np.argsort(-remainder, kind="stable"):
            if take.sum() >= k:
                break
            if take[c] < room[c]:
                take[c] += 1
    mask = np.zeros(len(classes), dtype=bool)
    for start, t in zip(starts, take, strict=True):
        mask[start : start + t] = True
    return mask


def _valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """(S, T) mask of the valid steps."""
    if lengths is None:
        return torch.ones(x.shape[:2], dtype=torch.bool)
    return torch.arange(x.shape[1])[None, :] < lengths[:, None]


def standardize(
    x: Tensor, mean: list[float], std: list[float], lengths: Tensor | None = None
) -> Tensor:
    """(x - mean) / std per channel of x (S, T, D), float32, with padding steps left 0."""
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    out = ((x.double() - m) / s).float()
    if lengths is not None:
        out[~_valid(x, lengths)] = 0.0
    return out


class Standardize(nn.Module):
    """x -> (x - mean) / std per input channel: a run's input normalisation in front of its
    model's encoder, so that raw inputs go in (eval, predict, stream, export)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def with_input_standardization(model: nn.Module, mean: list[float], std: list[float]) -> None:
    """Puts `Standardize(mean, std)` in front of `model.encoder` (in place); ValueError for a
    model without an encoder."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no input encoder to put the run's input "
            "normalisation in front of"
        )
    model.encoder = nn.Sequential(Standardize(mean, std), encoder)


def read_inputs(
    path: str | Path, split: str | None = None, input_size: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """(x (S, T, D), lengths (S,) or None, targets or None, sequence names) of a .npz or CSV
    file of new sequences: `x` (or `x_<split>`), optional `lengths` and `y`; or CSV rows of
    columns `sequence`, `x...`, optional `y...` and `split`. The file is read and checked as a
    training data file is (a damaged or pickled member, non-numeric or non-finite inputs, bad
    lengths), and x must have `input_size` channels when it is given. ValueError naming the
    file."""
    file = Path(path).expanduser()
    if file.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{file} must be a .npz or .csv file")
    if not file.is_file():
        raise ValueError(f"input file {file} is missing")
    if file.suffix.lower() == ".csv":
        groups = _read_csv(file, need_targets=False)
        key = split or ("all" if "all" in groups else None)
        if key not in groups:
            raise ValueError(
                f"{file} has the splits {sorted(groups)}; choose one with --split"
                if split is None
                else f"{file} has no rows of split {split!r} (it has {sorted(groups)})"
            )
        x, y, lengths = groups[key]
        names = _csv_names(file, key)
        y = y if y.shape[-1] else None
    else:
        suffix = "" if split is None else f"_{split}"
        with _open_npz(file) as data:
            keys = set(data.files)
            if f"x{suffix}" not in keys:
                hint = "; choose a split with --split" if split is None and "x_test" in keys else ""
                raise ValueError(f"{file} has no array 'x{suffix}' (it has {sorted(keys)}){hint}")
            x = data[f"x{suffix}"]
            y = data[f"y{suffix}"] if f"y{suffix}" in keys else None
            lengths = data[f"lengths{suffix}"] if f"lengths{suffix}" in keys else None
        if x.ndim == 2:
            x = x[..., None]
        names = [str(i) for i in range(x.shape[0])] if x.ndim else []
    where = str(file) + ("" if split is None else f" ({split})")
    _check_x(where, x)
    _check_lengths(where, x, lengths)
    if input_size is not None and x.shape[-1] != input_size:
        raise ValueError(
            f"{where} has {x.shape[-1]} channel(s) per step; the run was trained on {input_size}"
        )
    if y is not None and (y.ndim == 0 or y.shape[0] != x.shape[0]):
        y = None
    return x, lengths, y, names


def _csv_names(file: Path, split: str) -> list[str]:
    """The sequence names of one split of a CSV file, in order of first appearance."""
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        seq_col = header.index("sequence")
        split_col = header.index("split") if "split" in header else None
        names: dict[str, None] = {}
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if split_col is None or row[split_col].strip() == split:
                names.setdefault(row[seq_col].strip(), None)
    return list(names)


def label_value(value: Any) -> int | float | str:
    """A target label as the plain value a run's classes hold (see `ArraysTask.classes`)."""
    return _label(value, Path("input"))


__all__ = [
    "ArraysTask",
    "Standardize",
    "file_sha256",
    "label_value",
    "read_inputs",
    "standardize",
    "with_input_standardization",
]
