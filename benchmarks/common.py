"""Shared benchmark plumbing: machine description, timing, and result files."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def print_header(title: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    info = info or machine_info()
    print(f"# {title}")
    for key in ("cpu", "cpu_count", "torch_threads", "torch", "python", "commit", "cuda"):
        print(f"#   {key}: {info[key]}")
    return info


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    max_seconds: float = 30.0,
    device: torch.device | None = None,
) -> float:
    """Median wall time of fn() in seconds, after warm-up; stops early past max_seconds."""
    for _ in range(warmup):
        fn()
        _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > max_seconds:
            break
    return statistics.median(times)


def time_interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each of `runs`, which take turns within every repeat so
    that a change in machine load hits them alike; a first round warms up (compilation,
    allocator) and is not counted."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats + 1):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if rep > 0:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    info: dict[str, Any],
    out_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Writes rows as CSV and {machine, rows} as JSON under benchmarks/results/."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv"
    json_path = out_dir / f"{name}.json"
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"machine": info, "rows": list(rows)}, indent=2) + "\n")
    return csv_path, json_path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of the given columns (floats to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
