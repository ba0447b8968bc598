"""Peak memory of one training step vs sequence length, for every registered unit.

    python -m benchmarks.memory               # B=16, D=128, T = 256 ... 16384
    python -m benchmarks.memory --quick       # B=2, D=16, T in {256, 1024}, 3 units

Each configuration (unit, T) runs in a fresh Python subprocess so that one measurement cannot
inherit another's allocator pools. Units run in parallel mode when they have one, otherwise in
their recurrent mode (the torch.nn GRU/LSTM fused kernels; the Python-loop units only up to
`--max-recurrent-len`, default 4096, as in benchmarks.units).

How memory is measured:
- CPU: the resident-set high-water mark of the child process (`resource.getrusage(
  RUSAGE_SELF).ru_maxrss`, which torch allocations count towards, unlike `tracemalloc`). The
  child imports everything, builds the unit and input, runs a tiny warm-up step (T=8) so that
  kernel compilation and lazy imports are paid for, then reads the mark (`baseline_mb`), runs
  one training step at the target T and reads it again (`peak_mb`). `step_mb` = peak -
  baseline is the extra memory the step needed: activations saved for backward, gradients and
  temporaries. The mark only grows, so step_mb is a lower bound at small T, where the step may
  fit into memory the process had already touched; it is meaningful once it clearly exceeds
  a few MB.
- CUDA: `torch.cuda.max_memory_allocated()` after resetting the peak statistics, minus the
  memory allocated before the step.
`bytes_per_elem` = step memory / (B * T * D): the per-activation cost that grows with T.

Writes memory.csv / memory.json and memory.png (step memory vs T, log-log) to
benchmarks/results/ (memory_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, format_table, print_header, write_results

REPO = Path(__file__).resolve().parent.parent


def _child(name: str, T: int, batch: int, width: int, mode: str, device: str) -> dict:
    """Runs inside the subprocess: one measured training step of `name`."""
    import memrnn.units  # noqa: F401 - registers every unit module
    from memrnn.units import UNITS

    dev = torch.device(device)
    torch.manual_seed(0)
    cls = UNITS[name]
    unit = cls(width, width, **cls.example_kwargs).to(dev)
    unit.mode = mode

    def step(x: torch.Tensor) -> None:
        unit.zero_grad(set_to_none=True)
        y, _ = unit(x)
        y.square().sum().backward()

    step(torch.randn(batch, 8, width, device=dev))
    x = torch.randn(batch, T, width, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step(x)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        return {
            "method": "cuda.max_memory_allocated",
            "baseline_mb": before / 2**20,
            "peak_mb": peak / 2**20,
            "step_mb": (peak - before) / 2**20,
        }
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    step(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {
        "method": "ru_maxrss",
        "baseline_mb": before / 2**20,
        "peak_mb": peak / 2**20,
        "step_mb": (peak - before) / 2**20,
    }


def measure(
    name: str, T: int, batch: int, width: int, mode: str, device: str, timeout: float = 600.0
) -> dict:
    """One configuration in a fresh subprocess; {"error": ...} when it fails."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--child",
        json.dumps([name, T, batch, width, mode, device]),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> Path | None:
    if not any(r.get("step_mb") is not None for r in rows):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    names = sorted({r["unit"] for r in rows})
    colors = plt.get_cmap("tab20")(range(len(names)))
    for color, name in zip(colors, names, strict=True):
        pts = [
            (r["T"], max(r["step_mb"], 1e-2))
            for r in rows
            if r["unit"] == name and r.get("step_mb") is not None
        ]
        if pts:
            mode = next(r["mode"] for r in rows if r["unit"] == name)
            ax.loglog(
                *zip(*pts, strict=True),
                marker="o",
                ms=3,
                color=color,
                linestyle="-" if mode == "parallel" else "--",
                label=f"{name} ({mode})",
            )
    first = rows[0]
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("extra memory of one training step (MB)")
    ax.set_title(
        f"training-step memory, B={first['B']}, D={first['D']} ({first.get('method')})", fontsize=9
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    names: list[str],
    lengths: list[int],
    batch: int,
    width: int,
    device: str,
    max_recurrent_len: int,
    out_dir: Path | None,
    result_name: str = "memory",
) -> list[dict]:
    import memrnn.units  # noqa: F401 - registers every unit module
    from memrnn.units import UNITS

    info = print_header("training-step peak memory")
    method = "cuda.max_memory_allocated" if device.startswith("cuda") else "ru_maxrss"
    print(
        f"#   B={batch}, D={width}, float32, device {device}, method {method}, "
        "one fresh process per configuration"
    )
    rows = []
    for name in names:
        cls = UNITS[name]
        modes = cls(4, 4, **cls.example_kwargs).modes
        mode = "parallel" if "parallel" in modes else "recurrent"
        fused = name in ("gru", "lstm")
        for T in lengths:
            row = {"unit": name, "mode": mode, "T": T, "B": batch, "D": width}
            if mode == "recurrent" and not fused and T > max_recurrent_len:
                row["note"] = f"recurrent mode skipped above T={max_recurrent_len}"
            else:
                result = measure(name, T, batch, width, mode, device)
                row.update(result)
                if "step_mb" in result:
                    row["bytes_per_elem"] = result["step_mb"] * 2**20 / (batch * T * width)
            rows.append(row)
            columns = [
                "unit",
                "mode",
                "T",
                "baseline_mb",
                "peak_mb",
                "step_mb",
                "bytes_per_elem",
                "error",
                "note",
            ]
            print(format_table([row], columns).splitlines()[-1], flush=True)
    print()
    print(
        format_table(
            rows, ["unit", "mode", "T", "step_mb", "bytes_per_elem", "peak_mb", "error", "note"]
        )
    )
    csv_path, json_path = write_results(result_name, rows, info, out_dir)
    plot_path = plot(rows, (out_dir or RESULTS_DIR) / f"{result_name}.png")
    print(f"\nwrote {csv_path}, {json_path}" + (f", {plot_path}" if plot_path else ""))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--units", default="", help="comma-separated unit names (default: all)")
    parser.add_argument("--lengths", default="256,1024,4096,16384", help="comma-separated T values")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=128, help="D = hidden size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-recurrent-len",
        type=int,
        default=4096,
        help="skip Python-loop recurrent units above this length",
    )
    parser.add_argument(
        "--quick", action="store_true", help="B=2, D=16, T in {256, 1024}, units bmru, lru, gru"
    )
    parser.add_argument(
        "--out-dir",
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results)",
    )
    args = parser.parse_args(argv)
    if args.child:
        name, T, batch, width, mode, device = json.loads(args.child)
        print(json.dumps(_child(name, T, batch, width, mode, device)))
        return
    import memrnn.units  # noqa: F401 - registers every unit module
    from memrnn.units import UNITS

    names = [n for n in args.units.split(",") if n] or sorted(UNITS)
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        parser.error(f"unknown unit(s) {unknown}; expected names from {sorted(UNITS)}")
    lengths = [int(t) for t in args.lengths.split(",") if t]
    batch, width = args.batch, args.width
    if args.quick:
        lengths, batch, width = [256, 1024], 2, 16
        names = [n for n in names if n in ("bmru", "lru", "gru")] if not args.units else names
    run(
        names,
        lengths,
        batch,
        width,
        args.device,
        args.max_recurrent_len,
        args.out_dir,
        "memory_quick" if args.quick else "memory",
    )


if __name__ == "__main__":
    main()
