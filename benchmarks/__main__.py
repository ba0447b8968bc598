"""One entry point for every benchmark.

    python -m benchmarks units [--quick] [options of benchmarks.units]
    python -m benchmarks all --quick          # every benchmark in turn, each with --quick
    python -m benchmarks --list

Arguments after the benchmark name go to that module's own command line (each module stays
runnable alone as `python -m benchmarks.<name>`; `python -m benchmarks <name> --help` shows its
options). `all` runs every benchmark with only `--quick` passed on; a benchmark that fails
(e.g. a peer library is missing) is reported and the others still run.
"""

from __future__ import annotations

import importlib
import sys
import time

# name -> one line; the order `all` runs them in.
BENCHMARKS = {
    "units": "training-step time vs T of every registered unit, parallel vs recurrent",
    "scan": "linear_scan backends vs a plain loop, forward and backward",
    "lmu": "parallel LMU modes vs recurrent mode vs an LSTM of equal size",
    "src": "SRC network: fused loop vs plain loop",
    "brc": "BRC / nBRC: compiled sequence kernels vs the torch step loop",
    "peers": "memrnn vs peer libraries (accelerated-scan, mingru-pytorch)",
    "inference": "step() latency of every unit at B=1/16 and its independence from position",
    "memory": "peak memory of a training step vs T for every unit",
    "generation": "step() cost and state bytes of the small models up to 64k context",
    "threads": "a training run beside busy processes: default threads vs one per library",
}


def _usage() -> str:
    lines = [__doc__.strip(), "", "benchmarks:"]
    lines += [f"  {name:10s} {text}" for name, text in BENCHMARKS.items()]
    lines.append(f"  {'all':10s} every benchmark above, in that order")
    return "\n".join(lines)


def run_one(name: str, argv: list[str]) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        unknown = [a for a in rest if a != "--quick"]
        if unknown:
            print(f"`all` only takes --quick; got {unknown}", file=sys.stderr)
            return 2
        failed = []
        for each in BENCHMARKS:
            print(f"\n## benchmarks.{each} {' '.join(rest)}".rstrip(), flush=True)
            started = time.perf_counter()
            try:
                run_one(each, rest)
            except (Exception, SystemExit) as err:  # noqa: BLE001 - report and go on
                failed.append(each)
                print(f"## benchmarks.{each} failed: {err}", file=sys.stderr, flush=True)
            print(f"## benchmarks.{each}: {time.perf_counter() - started:.0f} s", flush=True)
        if failed:
            print(f"## failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    if name not in BENCHMARKS:
        print(
            f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)} or all",
            file=sys.stderr,
        )
        return 2
    run_one(name, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
