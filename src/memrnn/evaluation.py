"""Scoring a whole split, per-class reports, and predictions for new sequences: what
`memrnn eval` and `memrnn predict` run.

`score_split` walks a split in order, as the training loop's `evaluate` does, and also
returns how many sequences it scored and, for one-class-per-sequence classification, every
target and prediction, from which `class_report` builds per-class precision, recall and F1
and the confusion matrix (rows: true class, columns: predicted class).

Example:
    >>> report = class_report(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), ["a", "b"])
    >>> assert report["confusion"] == [[1, 1], [0, 2]] and report["accuracy"] == 0.75
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memrnn.tasks.base import Task, last_step


@dataclass
class Scores:
    """What one pass over a split measured.

    loss, metrics: means over the scored sequences (the task's own metrics).
    count: sequences scored.
    targets, predictions: (count,) class indices, for tasks with one class per sequence
        (None otherwise).
    """

    loss: float
    metrics: dict[str, float]
    count: int
    targets: Tensor | None = None
    predictions: Tensor | None = None


def one_class_per_sequence(task: Task) -> bool:
    """Whether the task predicts one class per sequence."""
    return task.loss_kind == "cross_entropy" and task.target == "last"


@torch.no_grad()
def score_split(
    model: nn.Module,
    task: Task,
    split: str,
    samples: int | None = None,
    batch_size: int = 64,
    seq_len: int | None = None,
) -> Scores:
    """Scores `split` in order: all of it (`samples` None; a generated task's own evaluation
    size), or its first `samples` sequences."""
    from memrnn.train.loop import flush_denormals

    was_training = model.training
    model.eval()
    total, loss_sum, sums = 0, 0.0, {}
    targets, predictions = [], []
    classes = one_class_per_sequence(task)
    try:
        with flush_denormals():
            for batch in task.iter_split(split, batch_size, max_samples=samples, seq_len=seq_len):
                out, _ = model(batch.x, lengths=batch.lengths)
                n = batch.x.shape[0]
                loss_sum += float(task.loss(out, batch)) * n
                for k, v in task.metrics(out, batch).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                if classes:
                    logits = last_step(out, batch.lengths) if out.dim() == 3 else out
                    targets.append(batch.y.reshape(-1))
                    predictions.append(logits.argmax(-1))
                total += n
    finally:
        model.train(was_training)
    return Scores(
        loss_sum / max(total, 1),
        {k: v / max(total, 1) for k, v in sums.items()},
        total,
        torch.cat(targets) if targets else None,
        torch.cat(predictions) if predictions else None,
    )


def class_report(targets: Tensor, predictions: Tensor, classes: list[Any]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, their unweighted means, accuracy and the
    confusion matrix (rows: true class, columns: predicted) of class indices into `classes`.
    A class never predicted has precision 0; one absent from the targets has recall 0."""
    k = len(classes)
    flat = targets.long() * k + predictions.long()
    confusion = torch.bincount(flat, minlength=k * k).reshape(k, k)
    tp = confusion.diag().double()
    predicted = confusion.sum(0).double()
    support = confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denominator = precision + recall
    f1 = torch.where(
        denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-300), 0.0 * tp
    )
    total = int(confusion.sum())
    return {
        "classes": list(classes),
        "count": total,
        "accuracy": float(tp.sum() / max(total, 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {
                "class": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "confusion": confusion.tolist(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one line per class, the means, then the confusion matrix."""
    names = [str(c) for c in report["classes"]]
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':>{width}}  precision  recall     f1  support"]
    for row in report["per_class"]:
        lines.append(
            f"{row['class']!s:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:6.4f}  {row['support']:7d}"
        )
    lines.append(
        f"{'mean':>{width}}  {report['macro_precision']:9.4f}  {report['macro_recall']:6.4f}  "
        f"{report['macro_f1']:6.4f}  {report['count']:7d}"
    )
    cell = max(5, width, *(len(str(v)) for row in report["confusion"] for v in row))
    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    lines.append(" " * width + "".join(f" {n:>{cell}}" for n in names))
    for name, row in zip(names, report["confusion"], strict=True):
        lines.append(f"{name:>{width}}" + "".join(f" {v:>{cell}}" for v in row))
    return "\n".join(lines)


def plot_confusion(report: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """The confusion matrix as an image (format from the suffix of `out`), counts in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memrnn.viz.curves import save_figure

    names = [str(c) for c in report["classes"]]
    matrix = torch.tensor(report["confusion"], dtype=torch.float64)
    k = len(names)
    size = min(12.0, 2.5 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    shown = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    ax.imshow(shown.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                color = "white" if shown[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=color)
    ax.set_xticks(range(k), names, rotation=90 if k > 8 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix ({report['count']} sequences)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)
    return Path(out)


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, lengths: Tensor | None = None, batch_size: int = 64
) -> Tensor:
    """The model's outputs for inputs x (S, T, D) in batches: (S, C) for a head with one
    output per sequence (read at each sequence's last valid step), (S, T, C) per step."""
    from memrnn.train.loop import flush_denormals

    was_training = model.training
    model.eval()
    outs = []
    try:
        with flush_denormals():
            for start in range(0, x.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                n = None if lengths is None else lengths[rows]
                out, _ = model(x[rows], lengths=n)
                outs.append(out)
    finally:
        model.train(was_training)
    return torch.cat(outs)


__all__ = [
    "Scores",
    "class_report",
    "format_report",
    "one_class_per_sequence",
    "plot_confusion",
    "predict",
    "score_split",
]
