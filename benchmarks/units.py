"""Training-step speed of every registered unit, parallel mode against recurrent mode.

    python -m benchmarks.units                         # B=16, D=128, T in {256, 1024, 4096}
    python -m benchmarks.units --units bmru,cmru,lru   # a subset of the registry
    python -m benchmarks.units --quick                 # tiny shapes, for smoke runs

A training step is forward + backward of a sum-of-squares loss on the outputs. For each unit
and length both modes are timed in the same run with the same weights and inputs, and the
ratio recurrent / parallel is the speed-up of the parallel path. Before timing, each unit's
parallel and recurrent outputs and gradients are compared in float64 on a small input; a unit
that fails this check gets no speed-up reported. Recurrent timing above --max-recurrent-len
is skipped, and slow cases (one step over --slow-seconds) are timed once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import memrnn.units  # noqa: F401 - registers every unit module
from benchmarks.common import format_table, print_header, time_fn, write_results
from memrnn.units import UNITS


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


def run(
    names: list[str], lengths: list[int], batch: int, width: int, repeats: int,
    max_recurrent_len: int, slow_seconds: float, out_dir: Path | None,
) -> list[dict]:
    info = print_header("unit training-step benchmark (forward + backward)")
    print(f"#   shape: B={batch}, D=H={width}, float32, lengths {lengths}")
    rows = []
    for name in names:
        # Some units set their modes per instance (from their configuration).
        parallel = "parallel" in _build(name, 4, 4, torch.float32).modes
        ok, note = _equivalent(name, min(width, 8)) if parallel else (True, "recurrent-only")
        for T in lengths:
            unit = _build(name, width, width, torch.float32)
            x = torch.randn(batch, T, width, generator=torch.Generator().manual_seed(T))
            row = {"unit": name, "T": T, "B": batch, "D": width, "check": note,
                   "parallel_s": None, "recurrent_s": None, "speedup": None, "recurrent_reps": None}
            if parallel:
                unit.mode = "parallel"
                row["parallel_s"], _ = _time(unit, x, repeats, slow_seconds)
            if T <= max_recurrent_len:
                unit.mode = "recurrent"
                row["recurrent_s"], row["recurrent_reps"] = _time(unit, x, repeats, slow_seconds)
            if ok and row["parallel_s"] and row["recurrent_s"]:
                row["speedup"] = row["recurrent_s"] / row["parallel_s"]
            rows.append(row)
            columns = ["unit", "T", "parallel_s", "recurrent_s", "speedup", "check"]
            print(format_table([row], columns).splitlines()[-1], flush=True)
    print()
    print(format_table(rows, ["unit", "T", "parallel_s", "recurrent_s", "recurrent_reps",
                              "speedup", "check"]))
    csv_path, json_path = write_results("units", rows, info, out_dir)
    print(f"\nwrote {csv_path} and {json_path}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", default="", help="comma-separated unit names (default: all)")
    parser.add_argument("--lengths", default="256,1024,4096", help="comma-separated T values")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=128, help="D = hidden size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-recurrent-len", type=int, default=4096,
                        help="skip recurrent timing above this length")
    parser.add_argument("--slow-seconds", type=float, default=2.0,
                        help="time a case once when one step takes longer than this")
    parser.add_argument("--quick", action="store_true", help="B=2, D=16, T in {32, 128}, 2 repeats")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [n for n in args.units.split(",") if n] or sorted(UNITS)
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        parser.error(f"unknown unit(s) {unknown}; expected names from {sorted(UNITS)}")
    lengths = [int(t) for t in args.lengths.split(",") if t]
    batch, width, repeats = args.batch, args.width, args.repeats
    if args.quick:
        lengths, batch, width, repeats = [32, 128], 2, 16, 2
    run(
        names, lengths, batch, width, repeats, args.max_recurrent_len, args.slow_seconds,
        args.out_dir,
    )


if __name__ == "__main__":
    main()
