"""Spike raster plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from memrnn.units.src import SPIKE_THRESHOLD, _onsets  # noqa: E402


def raster_plot(
    spikes: Tensor,
    sample: int = 0,
    path: str | Path | None = None,
    threshold: float = SPIKE_THRESHOLD,
    title: str | None = None,
) -> Figure | None:
    """Raster of one sample's neurons over time: a dot per spike onset (see `spike_stats`).

    spikes: (B, T, N) or (T, N). Saves a PNG (or any matplotlib format by suffix) to `path` and
    returns None, or returns the figure when `path` is None.
    """
    s = spikes.detach().cpu()
    if s.dim() == 2:
        s = s.unsqueeze(0)
    if s.dim() != 3:
        raise ValueError(
            f"raster_plot: spikes must be (B, T, N) or (T, N); got {tuple(spikes.shape)}"
        )
    onsets = _onsets(s[sample : sample + 1].float(), threshold)[0]  # (T, N)
    t, n = onsets.nonzero(as_tuple=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(t.numpy(), n.numpy(), s=4, marker="|", color="black")
    ax.set_xlim(0, s.shape[1])
    ax.set_ylim(-0.5, s.shape[2] - 0.5)
    ax.set_xlabel("time step")
    ax.set_ylabel("neuron")
    ax.set_title(title or f"spike raster, sample {sample}")
    if path is None:
        return fig
    from memrnn.viz.curves import save_figure

    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return None


__all__ = ["raster_plot"]
