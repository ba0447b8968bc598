"""Per-token inference latency of `step()` for every registered unit, and its independence
from the position in the sequence.

    python -m benchmarks.inference            # D=128, B in {1, 16}, positions 0, 1k, 10k
    python -m benchmarks.inference --quick    # D=16, B in {1, 4}, positions 0, 100, 1k

For each unit and batch size the unit is stepped (no gradient, `unit.eval()`) from its initial
state; at each probe position p the latency of one `step()` is measured over a window of
`--window` consecutive steps starting at p (after stepping there untimed). A recurrent unit
keeps a constant-size state, so the late/early ratio (latency at the last position over the
latency at the first, same run) should be ~1: anything growing with p would show up there.
Inputs cycle through a fixed pool of random steps so that input generation is not timed.

Writes inference.csv / inference.json and inference.png (latency per position, one line per
unit, one panel per batch size) to benchmarks/results/ (inference_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import memrnn.units  # noqa: F401 - registers every unit module
from benchmarks.common import RESULTS_DIR, format_table, print_header, write_results
from memrnn.units import UNITS

POOL = 64


def _build(name: str, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = UNITS[name]
    return cls(width, width, **cls.example_kwargs).eval()


@torch.no_grad()
def measure(
    name: str, batch: int, width: int, positions: list[int], window: int
) -> dict[int, tuple[float, float]]:
    """(median, mean) seconds per step() over `window` steps starting at each position."""
    unit = _build(name, width)
    pool = torch.randn(POOL, batch, width, generator=torch.Generator().manual_seed(batch))
    state = unit.init_state(batch)
    # Warm-up (first-call allocations, lazily built buffers) before any timed window.
    for i in range(8):
        _, state = unit.step(pool[i % POOL], state)
    state = unit.init_state(batch)
    t, out = 0, {}
    for p in sorted(positions):
        while t < p:
            _, state = unit.step(pool[t % POOL], state)
            t += 1
        times = []
        for _ in range(window):
            started = time.perf_counter()
            _, state = unit.step(pool[t % POOL], state)
            times.append(time.perf_counter() - started)
            t += 1
        out[p] = (statistics.median(times), statistics.fmean(times))
    return out


def plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({r["B"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.5), squeeze=False)
    names = sorted({r["unit"] for r in rows})
    colors = plt.get_cmap("tab20")(range(len(names)))
    for ax, batch in zip(axes[0], batches, strict=True):
        for color, name in zip(colors, names, strict=True):
            pts = sorted(
                (r["position"] + 1, r["us_per_step"])
                for r in rows
                if r["unit"] == name and r["B"] == batch
            )
            ax.loglog(*zip(*pts, strict=True), marker="o", ms=3, color=color, label=name)
        ax.set_xlabel("position in the sequence (+1)")
        ax.set_ylabel("µs per step()")
        ax.set_title(f"step() latency, B={batch}, D={rows[0]['D']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    names: list[str],
    batches: list[int],
    width: int,
    positions: list[int],
    window: int,
    out_dir: Path | None,
    result_name: str = "inference",
) -> list[dict]:
    info = print_header("unit step() latency vs position")
    print(
        f"#   D={width}, batches {batches}, positions {positions}, window {window} steps, "
        "no_grad, float32"
    )
    rows: list[dict] = []
    summary: list[dict] = []
    for name in names:
        for batch in batches:
            lat = measure(name, batch, width, positions, window)
            first, last = lat[min(lat)][0], lat[max(lat)][0]
            for p, (median, mean) in lat.items():
                rows.append(
                    {
                        "unit": name,
                        "B": batch,
                        "D": width,
                        "position": p,
                        "window": window,
                        "us_per_step": median * 1e6,
                        "mean_us_per_step": mean * 1e6,
                        "tokens_per_s": batch / median,
                        "late_over_early": last / first,
                    }
                )
            summary.append(
                {
                    "unit": name,
                    "B": batch,
                    **{f"us@{p}": lat[p][0] * 1e6 for p in sorted(lat)},
                    "late_over_early": last / first,
                }
            )
            print(format_table([summary[-1]], list(summary[-1])).splitlines()[-1], flush=True)
    print()
    print(format_table(summary, list(summary[0])))
    csv_path, json_path = write_results(result_name, rows, info, out_dir)
    plot_path = plot(rows, (out_dir or RESULTS_DIR) / f"{result_name}.png")
    print(f"\nwrote {csv_path}, {json_path}" + (f", {plot_path}" if plot_path else ""))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", default="", help="comma-separated unit names (default: all)")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--width", type=int, default=128, help="D = input and hidden size")
    parser.add_argument(
        "--positions",
        default="0,1000,10000",
        help="comma-separated step positions of the timed windows",
    )
    parser.add_argument("--window", type=int, default=200, help="timed steps per position")
    parser.add_argument(
        "--quick", action="store_true", help="D=16, B in {1, 4}, positions 0, 100, 1000, window 20"
    )
    parser.add_argument(
        "--out-dir",
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.units.split(",") if n] or sorted(UNITS)
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        parser.error(f"unknown unit(s) {unknown}; expected names from {sorted(UNITS)}")
    batches = [int(b) for b in args.batches.split(",") if b]
    positions = [int(p) for p in args.positions.split(",") if p]
    width, window = args.width, args.window
    if args.quick:
        batches, width, positions, window = [1, 4], 16, [0, 100, 1000], 20
    run(
        names,
        batches,
        width,
        positions,
        window,
        args.out_dir,
        "inference_quick" if args.quick else "inference",
    )


if __name__ == "__main__":
    main()
