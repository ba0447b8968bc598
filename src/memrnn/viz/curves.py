"""Learning curves from a run's metrics.csv: loss and every metric, train and val, vs step."""

from __future__ import annotations

import math
from pathlib import Path

from memrnn.train.logging import FIXED, read_metrics


def save_figure(fig: object, out: str | Path, dpi: int) -> None:
    """Renders `fig` in memory (format from the suffix) and writes it atomically: a new
    temporary file renamed onto `out`, never written through a link."""
    import io

    from memrnn.train.runfolder import atomic_write_bytes

    out = Path(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".").lower() or "png", dpi=dpi)
    atomic_write_bytes(out, buffer.getvalue())


def plot_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Writes a PNG (default `<run>/curves.png`) with one panel per quantity; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise ValueError(f"{str(run)!r}: metrics.csv has no rows yet")
    names = ["loss"] + [k for k in rows[0] if k not in FIXED]
    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for split in splits:
            points = [
                (int(r["step"]), float(r[name]))
                for r in rows
                if r["split"] == split and r.get(name) not in (None, "")
            ]
            points = [(s, v) for s, v in points if math.isfinite(v)]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps,
                    values,
                    marker="o" if split != "train" else None,
                    markersize=3,
                    label=split,
                )
        if name == "loss" and all(float(r["loss"]) > 0 for r in rows if r["loss"]):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run.name)
    fig.tight_layout()
    out = Path(out) if out is not None else run / "curves.png"
    try:
        save_figure(fig, out, dpi=110)
    finally:
        plt.close(fig)
    return out


__all__ = ["plot_curves", "save_figure"]
