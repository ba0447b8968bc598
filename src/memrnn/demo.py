"""The demo (`make demo`, `python -m memrnn.demo`): persistent vs fading memory, measured.

Trains a BMRU, a CMRU annealed to a BMRU, an LRU, a BMRU+LRU hybrid and a GRU on the
flip-flop task (output the last written bit at every step) at a training length T, then
evaluates every model at T and at 10·T. Writes are sparse, so the gaps a model must bridge
grow with the length: a multistable state holds its bit for any gap, a fading one does not.
Prints a table (model, parameters, steps, train time, accuracy at T and at 10·T) and writes
it as results.md / results.csv with a bar chart results.png under --out (default runs/demo).
The numbers are whatever this run measures on this machine.

    python -m memrnn.demo                 # about 40 s of one CPU core
    python -m memrnn.demo --quick         # a few seconds: a smoke test of the whole job

Every model trains for the same fixed number of steps on one thread, with no time limit, so the
table (steps and accuracies) is the same on a busy machine as on a quiet one; only the times
differ. `--time-per-model S` stops each model after S seconds of training, and the table's
steps column and a printed line say where it did.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from memrnn.models import list_models
from memrnn.runtime import get_threads, keep_freed_memory, set_threads
from memrnn.train.config import TrainConfig, UsageError, check_config
from memrnn.train.loop import evaluate, prepare_run_dir, train

# (label, model name, uses the epsilon schedule)
CONTENDERS = [
    ("BMRU", "bmru-small", False),
    ("CMRU -> BMRU", "cmru-small", True),
    ("LRU", "lru-small", False),
    ("BMRU+LRU hybrid", "hybrid-small", False),
    ("GRU", "gru-small", False),
]


@dataclass
class Row:
    label: str
    model: str
    parameters: int
    steps: int
    train_time: float
    metric_at_t: float
    metric_at_10t: float


def _settings(quick: bool) -> dict:
    if quick:
        return {
            "train_len": 16,
            "steps": 3,
            "d_model": 8,
            "batch_size": 8,
            "eval_samples": 16,
            "p_write": 0.1,
        }
    return {
        "train_len": 64,
        "steps": 300,
        "d_model": 32,
        "batch_size": 16,
        "eval_samples": 256,
        "p_write": 0.03,
    }


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    steps: int | None = None,
    time_per_model: float | None = None,
    train_len: int | None = None,
    factor: int = 10,
    seed: int = 0,
    models: list[str] | None = None,
) -> list[Row]:
    s = _settings(quick)
    steps = steps or s["steps"]
    train_len = train_len or s["train_len"]
    # No wall-clock cap by default: every model trains for the same number of steps, so the
    # table is the same on a loaded machine as on a quiet one (only the times differ).
    budget = time_per_model
    out = prepare_run_dir(out)
    available = set(list_models())
    chosen = [c for c in CONTENDERS if c[1] in available and (not models or c[1] in models)]
    missing = [c[1] for c in CONTENDERS if c[1] not in available]
    if missing:
        print(f"# not available here (units not registered): {', '.join(missing)}")
    if not chosen:
        raise UsageError("none of the demo models is available; check `memrnn list`")
    test_len = factor * train_len
    limit = "no time limit" if budget is None else f"stopped early after {budget:g} s"
    print(
        f"# flip-flop, p_write {s['p_write']}, train at T = {train_len}, test at "
        f"{factor}T = {test_len}; {steps} steps per model ({limit})"
    )
    for _, name, _ in chosen:
        warm_up(name, s["d_model"])
    rows = []
    for label, name, anneal in chosen:
        config = TrainConfig(
            model=name,
            task="flip-flop",
            out=str(out / name),
            seq_len=train_len,
            steps=steps,
            time_limit=budget,
            batch_size=s["batch_size"],
            lr=3e-3,
            warmup=min(50, steps // 10),
            eval_samples=s["eval_samples"],
            log_every=max(1, steps // 50),
            seed=seed,
            progress=sys.stderr.isatty(),
            overwrite=True,
            tensorboard=False,
            epsilon_schedule=f"{int(0.1 * steps)},{int(0.25 * steps)}" if anneal else None,
            model_overrides={"d_model": s["d_model"]},
            task_kwargs={"p_write": s["p_write"], "test_len": test_len},
        )
        check_config(config)
        result = train(config)
        model, task = result.model, result.task
        if anneal:
            # The deployed model is a true BMRU (epsilon = 0), whether or not a time limit
            # cut the annealing short.
            from memrnn.models.registry import current_epsilon, set_epsilon

            if current_epsilon(model) != 0.0:
                print(
                    f"# {label}: the time limit ended annealing at epsilon = "
                    f"{current_epsilon(model):.2f}; evaluating at epsilon = 0"
                )
            set_epsilon(model, 0.0)
        _, at_t = evaluate(model, task, "val", s["eval_samples"])
        _, at_10t = evaluate(model, task, "test", max(16, s["eval_samples"] // 2))
        metric = task.primary_metric
        row = Row(
            label,
            name,
            sum(p.numel() for p in model.parameters()),
            result.step,
            result.train_time,
            at_t[metric],
            at_10t[metric],
        )
        rows.append(row)
        if row.steps < steps:
            print(f"# {label}: --time-per-model stopped it after {row.steps} of {steps} steps")
        print(
            f"{label:16s} {row.steps:5d} steps {row.train_time:6.1f} s   {metric} at T "
            f"{row.metric_at_t:.3f}, at {factor}T {row.metric_at_10t:.3f}",
            flush=True,
        )
    write_results(rows, out, train_len, test_len)
    return rows


def warm_up(name: str, d_model: int) -> None:
    """One tiny forward/backward, so that one-off kernel compilation (or loading from numba's
    disk cache) is not timed as training; likewise the first optimizer, whose construction
    imports torch._dynamo (1.6 s of CPU time)."""
    from memrnn.models import create_model

    model = create_model(name, input_size=2, output_size=2, head="sequence", d_model=d_model)
    out, _ = model(torch.randn(2, 8, 2))
    out.sum().backward()
    torch.optim.AdamW(model.parameters())


def table(rows: list[Row], train_len: int, test_len: int) -> str:
    lines = [
        f"| model | parameters | steps | train time (s) | accuracy at T={train_len} "
        f"| accuracy at T={test_len} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.parameters:,} | {r.steps} | {r.train_time:.1f} "
            f"| {r.metric_at_t:.3f} | {r.metric_at_10t:.3f} |"
        )
    return "\n".join(lines)


def write_results(rows: list[Row], out: Path, train_len: int, test_len: int) -> None:
    text = table(rows, train_len, test_len)
    print()
    print(text)
    (out / "results.md").write_text(
        f"# Flip-flop: trained at T = {train_len}, tested at T = {test_len}\n\n{text}\n"
    )
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "model",
                "name",
                "parameters",
                "steps",
                "train_time_s",
                f"accuracy_T{train_len}",
                f"accuracy_T{test_len}",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.label,
                    r.model,
                    r.parameters,
                    r.steps,
                    f"{r.train_time:.2f}",
                    f"{r.metric_at_t:.4f}",
                    f"{r.metric_at_10t:.4f}",
                ]
            )
    plot_results(rows, out / "results.png", train_len, test_len)
    print(f"\nwrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")


def plot_results(rows: list[Row], path: Path, train_len: int, test_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    xs = range(len(rows))
    width = 0.38
    ax.bar(
        [x - width / 2 for x in xs],
        [r.metric_at_t for r in rows],
        width,
        label=f"T = {train_len} (train length)",
    )
    ax.bar(
        [x + width / 2 for x in xs], [r.metric_at_10t for r in rows], width, label=f"T = {test_len}"
    )
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(list(xs), [r.label for r in rows])
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("flip-flop: persistent vs fading memory")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memrnn.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="tiny smoke version (seconds)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--time-per-model", type=float, default=None, help="seconds of training")
    parser.add_argument("--train-len", type=int, default=None)
    parser.add_argument("--factor", type=int, default=10, help="test length / train length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=None, help="registry names to include")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of torch and numba (default 1: the same sums in the same order on any "
        "machine, and no threads waiting for each other on a busy one)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be an integer >= 1, got {args.threads}")
    keep_freed_memory()  # memrnn.runtime, as `memrnn train` does
    threads_before = get_threads()
    set_threads(args.threads)
    start = time.perf_counter()
    try:
        run_demo(
            args.out,
            args.quick,
            args.steps,
            args.time_per_model,
            args.train_len,
            args.factor,
            args.seed,
            args.models,
        )
    except UsageError as err:
        print(f"memrnn.demo: error: {err}", file=sys.stderr)
        return 2
    finally:
        # Called from Python (or a test), the caller's thread counts come back.
        set_threads(threads_before["torch"])
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
