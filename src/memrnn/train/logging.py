"""Run logs: `metrics.csv` (one row per logged step and split) and, when available, TensorBoard.

TensorBoard (the optional `tensorboard` package, `pip install "memrnn[tensorboard]"`) gets the
same values in `<run_dir>/tensorboard/`, each scalar once per logged step, tagged
`<split>/<name>`: `train/loss`, `train/lr`, `train/accuracy`, `val/loss`, `val/accuracy`, ...

Columns: step, split, loss, lr, time, then one column per metric name in order of first
appearance (a new name rewrites the file with the wider header). Opening a log for a resumed
run drops the rows written after the checkpoint it resumes from.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from memrnn.train.runfolder import atomic_write_text, open_append

FIXED = ["step", "split", "loss", "lr", "time"]
METRICS_CSV = "metrics.csv"


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv (a run folder or the file itself) as dicts of strings."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_CSV
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLogger:
    """Appends rows to `<run_dir>/metrics.csv` (and TensorBoard when `tensorboard` and the
    package are available). `resume_step`: keep only the existing rows with step <= it."""

    def __init__(
        self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = False
    ) -> None:
        self.path = Path(run_dir) / METRICS_CSV
        self.columns = list(FIXED)
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self.rows = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            for row in self.rows:
                self._extend_columns(row)
        self._rewrite()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:
                # TensorBoard is optional: without the package the CSV log is the record.
                self.writer = None

    def _extend_columns(self, row: dict[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns.extend(new)
        return bool(new)

    def _rewrite(self) -> None:
        # A new temporary file renamed into place: never written through a link.
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())

    def log(
        self, step: int, split: str, loss: float, metrics: dict[str, float], lr: float, time: float
    ) -> None:
        row: dict[str, Any] = {
            "step": step,
            "split": split,
            "loss": f"{loss:.6g}",
            "lr": f"{lr:.6g}",
            "time": f"{time:.3f}",
        }
        row.update({k: f"{float(v):.6g}" for k, v in metrics.items() if k not in FIXED})
        self.rows.append(row)
        if self._extend_columns(row):
            self._rewrite()
        else:
            with os.fdopen(open_append(self.path), "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        if self.writer is not None:
            # Each scalar once per step: the metrics repeat "loss" (and may repeat the other
            # fixed columns), which are written from the arguments.
            scalars = {"loss": loss, **{k: v for k, v in metrics.items() if k not in FIXED}}
            if split == "train":
                scalars["lr"] = lr
            for k, v in scalars.items():
                self.writer.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["METRICS_CSV", "MetricsLogger", "read_metrics"]
