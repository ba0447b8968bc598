"""Training-step speed of every registered unit vs sequence length, parallel against recurrent.

    python -m benchmarks.units                         # B=16, D=128, T = 256 ... 16384
    python -m benchmarks.units --units bmru,cmru,lru   # a subset of the registry
    python -m benchmarks.units --quick                 # tiny shapes, for smoke runs

A training step is forward + backward of a sum-of-squares loss on the outputs. Every unit of
`memrnn.units.UNITS` is timed, the sequential baselines included: "gru" and "lstm" are
torch.nn.GRU / torch.nn.LSTM of the same width running their fused kernels (their only mode,
reported as recurrent). For each unit and length both modes are timed in the same run with the
same weights and inputs, taking turns repetition by repetition (up to `--single-rep-len`), so
that the machine's speed drifting during the run reaches both; each timed step follows an
untimed step of its own mode, as steps do in training; `speedup` = recurrent /
parallel, and `gru_over_unit` = (time of the torch.nn.GRU step at that T) / (this unit's
fastest mode), both ratios of this run.

Before timing, each unit's parallel and recurrent outputs and gradients are compared in
float64 on a small input; a unit that fails this check gets no speed-up reported (its row says
why). Recurrent mode of the units without a fused kernel is a Python loop over time steps, so
it is slow at long T: above `--single-rep-len` (default 4096) it is timed once, without a
warm-up, and above `--max-recurrent-len` (default 16384: every length of a default run) it is
not timed at all; a full run took 10 minutes on a 2-core CPU (T = 256 ... 16384). Cases whose first
step takes longer than `--slow-seconds` are also timed once after that warm-up.

The process keeps freed memory for reuse (`memrnn.runtime.keep_freed_memory`, as the training
CLI does), so that steps do not take page faults over their activations again each time; it
applies to both modes alike and the header says so. `--no-keep-freed-memory` times with the C
library's defaults.

Writes units.csv / units.json and units.png (time vs T, log-log, one line per unit and mode)
to benchmarks/results/ (units_quick.* with --quick), or to --out-dir.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import memrnn.units  # noqa: F401 - registers every unit module
from benchmarks.common import RESULTS_DIR, format_table, print_header, time_fn, write_results
from memrnn.runtime import freed_memory_kept, keep_freed_memory
from memrnn.units import UNITS

# The registry wraps these two torch.nn modules; their rows are labelled with the torch name.
TORCH_BASELINES = {"gru": "torch.nn.GRU", "lstm": "torch.nn.LSTM"}


def _build(name: str, input_size: int, hidden_size: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = UNITS[name]
    return cls(input_size, hidden_size, **cls.example_kwargs).to(dtype)


def _train_step(unit: torch.nn.Module, x: torch.Tensor) -> None:
    unit.zero_grad(set_to_none=True)
    y, _ = unit(x)
    y.square().sum().backward()


def _equivalent(name: str, width: int) -> tuple[bool, str]:
    """Parallel and recurrent outputs and gradients agree in float64 on a small input."""
    unit = _build(name, width, width, torch.float64)
    x = torch.randn(2, 33, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for mode in ("parallel", "recurrent"):
        unit.mode = mode
        unit.zero_grad(set_to_none=True)
        y, _ = unit(x)
        y.square().sum().backward()
        grads = [p.grad.clone() for p in unit.parameters() if p.grad is not None]
        results.append([y.detach(), *grads])
    ok = len(results[0]) == len(results[1]) and all(
        torch.allclose(a, b, rtol=1e-8, atol=1e-8) for a, b in zip(*results, strict=True)
    )
    return ok, "ok" if ok else "parallel and recurrent disagree"


def _time(
    unit: torch.nn.Module, x: torch.Tensor, repeats: int, slow_seconds: float
) -> tuple[float, int]:
    """Median seconds per training step, and how many repetitions were timed."""
    started = time.perf_counter()
    _train_step(unit, x)
    first = time.perf_counter() - started
    if first > slow_seconds:
        # One timed repetition after the warm-up: the warm-up already cost more than the budget.
        started = time.perf_counter()
        _train_step(unit, x)
        return time.perf_counter() - started, 1
    return time_fn(lambda: _train_step(unit, x), repeats=repeats, warmup=0), repeats


def _time_both(
    unit: torch.nn.Module, x: torch.Tensor, repeats: int, slow_seconds: float
) -> tuple[float, float, int]:
    """Median seconds per training step in parallel and in recurrent mode, and how many
    repetitions of each were timed. The modes take turns, so that a change in the machine's
    speed during the measurement reaches both alike; in each turn one step runs untimed before
    the timed one, so that every timed step follows a step of its own mode, as in training
    (measured: the first parallel BMRU step after a recurrent one took 39-70 ms, the next ones
    31-38 ms, at B = 16, T = 1024, D = 128)."""
    modes = ("parallel", "recurrent")
    second = []
    for mode in modes:  # warm-up: the first step compiles kernels, the second is timed
        unit.mode = mode
        _train_step(unit, x)
        second.append(_time_once(unit, x)[0])
    reps = 1 if max(second) > slow_seconds else repeats
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(reps):
        for mode in modes:
            unit.mode = mode
            _train_step(unit, x)
            times[mode].append(_time_once(unit, x)[0])
    return statistics.median(times["parallel"]), statistics.median(times["recurrent"]), reps


def _time_once(unit: torch.nn.Module, x: torch.Tensor) -> tuple[float, int]:
    started = time.perf_counter()
    _train_step(unit, x)
    return time.perf_counter() - started, 1


def _add_ratios(rows: list[dict]) -> None:
    """gru_over_unit: the torch.nn.GRU step time at the same T over the unit's fastest mode."""
    gru = {r["T"]: r["recurrent_s"] for r in rows if r["unit"] == "gru" and r["recurrent_s"]}
    for row in rows:
        times = [t for t in (row["parallel_s"], row["recurrent_s"]) if t]
        if row["T"] in gru and times and not row["check"].startswith("parallel and"):
            row["gru_over_unit"] = gru[row["T"]] / min(times)


def plot(rows: list[dict], path: Path) -> Path | None:
    """Time per training step vs T, log-log: one line per unit and mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = sorted({r["unit"] for r in rows})
    colors = plt.get_cmap("tab20")(range(len(names)))
    for color, name in zip(colors, names, strict=True):
        for mode, style in (("parallel", "-"), ("recurrent", "--")):
            pts = [(r["T"], r[f"{mode}_s"]) for r in rows if r["unit"] == name and r[f"{mode}_s"]]
            if pts:
                label = TORCH_BASELINES.get(name, name) + f" ({mode})"
                ax.loglog(
                    *zip(*pts, strict=True), style, marker="o", ms=3, color=color, label=label
                )
    first = rows[0]
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("seconds per training step (forward + backward)")
    ax.set_title(
        f"units, B={first['B']}, D={first['D']}, float32 (solid: parallel, dashed: recurrent)",
        fontsize=9,
    )
    ax.legend(fontsize=6, ncol=2)
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
    repeats: int,
    max_recurrent_len: int,
    slow_seconds: float,
    out_dir: Path | None,
    single_rep_len: int = 4096,
    result_name: str = "units",
) -> list[dict]:
    info = print_header("unit training-step benchmark (forward + backward)")
    kept = freed_memory_kept()
    info["malloc"] = (
        f"freed blocks up to {kept >> 20} MiB kept for reuse (memrnn.runtime.keep_freed_memory)"
        if kept
        else "C library defaults"
    )
    print(f"#   shape: B={batch}, D=H={width}, float32, lengths {lengths}")
    print(f"#   malloc: {info['malloc']}")
    print(
        f"#   recurrent mode: timed once above T={single_rep_len}, "
        f"skipped above T={max_recurrent_len} (except torch.nn.GRU/LSTM)"
    )
    rows = []
    for name in names:
        # Some units set their modes per instance (from their configuration).
        parallel = "parallel" in _build(name, 4, 4, torch.float32).modes
        ok, note = _equivalent(name, min(width, 8)) if parallel else (True, "recurrent-only")
        for T in lengths:
            unit = _build(name, width, width, torch.float32)
            x = torch.randn(batch, T, width, generator=torch.Generator().manual_seed(T))
            row = {
                "unit": name,
                "impl": TORCH_BASELINES.get(name, "memrnn"),
                "T": T,
                "B": batch,
                "D": width,
                "params": sum(p.numel() for p in unit.parameters()),
                "check": note,
                "parallel_s": None,
                "recurrent_s": None,
                "speedup": None,
                "recurrent_reps": None,
                "gru_over_unit": None,
            }
            # torch.nn.GRU/LSTM run a fused kernel: fast enough at every length.
            fused = name in TORCH_BASELINES
            if parallel and T <= min(max_recurrent_len, single_rep_len):
                row["parallel_s"], row["recurrent_s"], row["recurrent_reps"] = _time_both(
                    unit, x, repeats, slow_seconds
                )
            elif parallel:
                unit.mode = "parallel"
                row["parallel_s"], _ = _time(unit, x, repeats, slow_seconds)
            if row["recurrent_s"] is None and (T <= max_recurrent_len or fused):
                unit.mode = "recurrent"
                if T > single_rep_len and not fused:
                    row["recurrent_s"], row["recurrent_reps"] = _time_once(unit, x)
                else:
                    row["recurrent_s"], row["recurrent_reps"] = _time(
                        unit, x, repeats, slow_seconds
                    )
            if ok and row["parallel_s"] and row["recurrent_s"]:
                row["speedup"] = row["recurrent_s"] / row["parallel_s"]
            rows.append(row)
            columns = ["unit", "T", "parallel_s", "recurrent_s", "speedup", "check"]
            print(format_table([row], columns).splitlines()[-1], flush=True)
    _add_ratios(rows)
    print()
    print(
        format_table(
            rows,
            [
                "unit",
                "impl",
                "T",
                "params",
                "parallel_s",
                "recurrent_s",
                "recurrent_reps",
                "speedup",
                "gru_over_unit",
                "check",
            ],
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
    parser.add_argument("--units", default="", help="comma-separated unit names (default: all)")
    parser.add_argument("--lengths", default="256,1024,4096,16384", help="comma-separated T values")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=128, help="D = hidden size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--max-recurrent-len",
        type=int,
        default=16384,
        help="skip recurrent timing of Python-loop units above this length",
    )
    parser.add_argument(
        "--single-rep-len",
        type=int,
        default=4096,
        help="time recurrent mode once, without warm-up, above this length",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=2.0,
        help="time a case once when one step takes longer than this",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B=2, D=16, T in {32, 128}, 2 repeats; writes units_quick.*",
    )
    parser.add_argument(
        "--out-dir",
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results)",
    )
    parser.add_argument(
        "--no-keep-freed-memory",
        action="store_true",
        help="leave malloc at its defaults (see memrnn.runtime; both modes are timed alike)",
    )
    args = parser.parse_args(argv)
    if not args.no_keep_freed_memory:
        keep_freed_memory()
    names = [n for n in args.units.split(",") if n] or sorted(UNITS)
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        parser.error(f"unknown unit(s) {unknown}; expected names from {sorted(UNITS)}")
    lengths = [int(t) for t in args.lengths.split(",") if t]
    batch, width, repeats = args.batch, args.width, args.repeats
    if args.quick:
        lengths, batch, width, repeats = [32, 128], 2, 16, 2
    run(
        names,
        lengths,
        batch,
        width,
        repeats,
        args.max_recurrent_len,
        args.slow_seconds,
        args.out_dir,
        args.single_rep_len,
        "units_quick" if args.quick else "units",
    )


if __name__ == "__main__":
    main()
