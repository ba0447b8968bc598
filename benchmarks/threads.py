"""Threads on a shared CPU: a training run with and without busy processes competing for the
cores, under memrnn's default thread sizing and under fixed thread counts.

Each measurement is one `memrnn train --model cmru-small --task flip-flop --steps 40` process
(a CMRU, whose kernels run in numba, between torch operations), timed from start to exit (the
wall time a user waits) and by the training time it reports. The settings compared:

    default   no thread variables set: memrnn sizes torch's and numba's threads itself
    one       OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1: one thread per library
    cores     --threads <cores>: one thread per core in each library (what both libraries
              start with when left alone)

each with no competing process ("idle") and with `--busy` processes spinning on the CPU
("busy"). The settings and loads take turns within every repeat (the order of the settings
rotates from one repeat to the next), so that a change in the machine's load from elsewhere
hits them alike; a first, uncounted run fills numba's compile cache. Reported: the median of
each cell and the ratios default/one and cores/one under each load, from the same run.

    python -m benchmarks.threads [--quick] [--repeats 3] [--busy 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import format_table, print_header, write_results
from memrnn.runtime import usable_cores

SETTINGS = ("default", "one", "cores")
BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def _command(out: Path, steps: int, setting: str, cores: int) -> tuple[list[str], dict]:
    argv = [sys.executable, "-m", "memrnn", "train", "--model", "cmru-small"]
    argv += ["--task", "flip-flop", "--steps", str(steps), "--out", str(out), "--overwrite"]
    argv += ["--no-progress", "--tensorboard", "false"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    if setting == "one":
        env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    elif setting == "cores":
        argv += ["--threads", str(cores)]
    return argv, env


def _run(out: Path, steps: int, setting: str, cores: int) -> tuple[float, float]:
    """(wall seconds, reported training seconds) of one training process."""
    argv, env = _command(out, steps, setting, cores)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    match = re.search(r"train time ([0-9.]+) s", done.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def _start_busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
    for p in processes:
        p.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="counted rounds (default 3)")
    parser.add_argument("--busy", type=int, default=2, help="competing busy processes")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated subset of {','.join(SETTINGS)} ('one' is always run)",
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    wanted = {s.strip() for s in args.settings.split(",") if s.strip()}
    if not wanted <= set(SETTINGS):
        parser.error(f"--settings: unknown {sorted(wanted - set(SETTINGS))}; use {SETTINGS}")
    settings = tuple(s for s in SETTINGS if s in wanted | {"one"})
    steps, repeats = (10, 1) if args.quick else (args.steps, args.repeats)
    cores = usable_cores()
    info = print_header("threads: a training run beside busy processes")
    info["usable_cores"] = cores
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for setting in settings:
            _run(out, steps, setting, cores)  # numba's compile cache, page cache
        for rep in range(repeats):
            for load in ("idle", "busy"):
                busy = _start_busy(args.busy) if load == "busy" else []
                try:
                    time.sleep(1.0 if busy else 0.0)
                    k = rep % len(settings)
                    order = settings[k:] + settings[:k]
                    for setting in order:
                        result = _run(out, steps, setting, cores)
                        times.setdefault((load, setting), []).append(result)
                        print(
                            f"#   round {rep + 1} {load:4s} {setting:7s} wall {result[0]:.2f} s "
                            f"train {result[1]:.2f} s",
                            flush=True,
                        )
                finally:
                    _stop(busy)
    rows = []
    for load in ("idle", "busy"):
        one = statistics.median(w for w, _ in times[(load, "one")])
        one_train = statistics.median(t for _, t in times[(load, "one")])
        for setting in settings:
            wall = statistics.median(w for w, _ in times[(load, setting)])
            train = statistics.median(t for _, t in times[(load, setting)])
            rows.append(
                {
                    "load": load,
                    "busy_processes": args.busy if load == "busy" else 0,
                    "setting": setting,
                    "steps": steps,
                    "repeats": repeats,
                    "wall_s": wall,
                    "train_s": train,
                    "wall_vs_one": wall / one,
                    "train_vs_one": train / one_train,
                    "walls": [round(w, 3) for w, _ in times[(load, setting)]],
                }
            )
    columns = ["load", "busy_processes", "setting", "wall_s", "train_s", "wall_vs_one"]
    print(format_table(rows, [*columns, "train_vs_one"]))
    name = "threads_quick" if args.quick else "threads"
    for path in write_results(name, rows, info, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
