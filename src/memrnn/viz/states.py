"""Hidden states over time for one sample: heatmaps (and traces) that show persistent memory.

The model is run step by step (`model.step`), and every tensor of every layer's state is
recorded. A BMRU's states are flat ±1 bands that switch only on writes; an LRU's decay. For
spiking units the spike outputs (ReLU of the fast state h) also go to a raster
(memrnn.viz.spikes.raster_plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MAX_ROWS = 64


def _leaves(state: Any, prefix: str) -> list[tuple[str, Tensor]]:
    """(dotted name, tensor) for every tensor inside nested NamedTuples/tuples."""
    if isinstance(state, Tensor):
        return [(prefix, state)]
    if hasattr(state, "_fields"):
        out = []
        for name, value in zip(state._fields, state, strict=True):
            out += _leaves(value, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(state, tuple | list):
        out = []
        for i, value in enumerate(state):
            out += _leaves(value, f"{prefix}.{i}" if prefix else str(i))
        return out
    return []


@torch.no_grad()
def collect_states(model: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Runs one sample x (T, D) or (T,) ids step by step.

    Returns ({"layer<i>.<field>": (T, N) real tensor}, outputs (T, C)).
    """
    model.eval()
    state = model.init_state(1)
    traces: dict[str, list[Tensor]] = {}
    outputs = []
    for t in range(x.shape[0]):
        out, state = model.step(x[t : t + 1], state)
        outputs.append(out[0].reshape(-1))
        for i, layer in enumerate(state.layers):
            for name, value in _leaves(layer, ""):
                if value.dim() == 0 or value.shape[0] != 1:
                    continue
                flat = value[0].reshape(-1)
                flat = flat.real if flat.is_complex() else flat
                traces.setdefault(f"layer{i}.{name}", []).append(flat.float().cpu())
    return {k: torch.stack(v) for k, v in traces.items()}, torch.stack(outputs).float().cpu()


def _is_spiking(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    if config is not None and config.arch == "spiking":
        return True
    return any(type(m).__name__ == "SRC" for m in model.modules())


def plot_states(
    model: nn.Module, x: Tensor, out: str | Path, title: str = "", max_panels: int = 6
) -> list[Path]:
    """Writes a PNG: the input, one heatmap per recorded state tensor, and the outputs; for
    spiking models also `<out stem>_spikes.png`, a raster of every layer's spikes. Returns the
    paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces, outputs = collect_states(model, x)
    names = list(traces)[:max_panels]
    n = len(names) + 2
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.2 + 1.6 * n), sharex=True, squeeze=False)
    axes = axes[:, 0]
    inputs = x.float().cpu()
    axes[0].plot(inputs if inputs.dim() == 2 else inputs.unsqueeze(-1), linewidth=0.8)
    axes[0].set_ylabel("input")
    for ax, name in zip(axes[1:-1], names, strict=True):
        values = traces[name][:, :MAX_ROWS]  # (T, N)
        limit = float(values.abs().max()) or 1.0
        image = ax.imshow(
            values.T.numpy(),
            aspect="auto",
            interpolation="nearest",
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
        )
        fig.colorbar(image, ax=ax, pad=0.01)
        ax.set_ylabel(f"{name}\nunit")
    axes[-1].plot(outputs.numpy(), linewidth=0.8)
    axes[-1].set_ylabel("output")
    axes[-1].set_xlabel("step")
    fig.suptitle(title or "hidden states over time (one sample)")
    fig.tight_layout()
    out = Path(out)
    from memrnn.viz.curves import save_figure

    try:
        save_figure(fig, out, dpi=110)
    finally:
        plt.close(fig)
    written = [out]
    if _is_spiking(model):
        spikes = [torch.relu(v) for k, v in traces.items() if k.endswith(".h")]
        if spikes:
            from memrnn.viz.spikes import raster_plot

            path = out.with_name(f"{out.stem}_spikes{out.suffix}")
            raster_plot(torch.cat(spikes, dim=1), path=path, title=title or None)
            written.append(path)
    return written


__all__ = ["collect_states", "plot_states"]
