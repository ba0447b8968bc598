"""The cost of generating: one `step()` of each small model at context positions up to 64k,
its state's bytes there, the prefill of a 4k prompt, and a training step at T = 1k and 4k.

    python -m benchmarks.generation            # positions 1k, 4k, 16k, 64k; B = 1 and 16
    python -m benchmarks.generation --quick    # positions 64, 256; B = 1 and 4; 3 models

Every model is a registered `*-small` network (2 blocks of width 64) built as a next-token
model over a vocabulary of 256. For each position P the context (P random tokens) is read
with one parallel forward at batch 1 (for the full-attention Transformer in query blocks, see
memrnn.units.transformer), and the state it leaves is repeated over the batch for B > 1, so
that every batch size steps from the same context. Then one `step()` from that state is timed
(no gradient, eval mode); the steps at the different positions take turns within every
repeat, so a change of machine load hits them alike, and each timed step starts again from
the state at P (the cache does not grow while timing). Each step is timed twice: wall time
and the process's CPU time (`time.process_time`, which on a machine shared with other work
counts only the work of this process; run with one torch thread). `step_ms` is the median
CPU time, `step_min_ms` the smallest (the step's cost with the least interference from other
work on the machine: caches shared with it), `step_wall_ms` the median wall time;
`ratio_to_first` and `min_ratio_to_first` divide `step_ms` and `step_min_ms` at P by their
value at the first position, from the same run.

The full-attention Transformer's cache is functional (each step returns a new, longer cache,
`torch.cat` of the old one and the new entry), so its step copies the cache as well as
reading it: both are proportional to the position.

Writes generation.csv / generation.json and generation.png (log-log: step latency and state
bytes against position) to benchmarks/results/ (generation_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from benchmarks.common import RESULTS_DIR, format_table, print_header, time_fn, write_results
from memrnn.models import create_model

MODELS = (
    "bmru-small",
    "cmru-small",
    "lru-small",
    "mingru-small",
    "hybrid-small",
    "plmu-small",
    "gru-small",
    "transformer-small",
    "transformer-window-small",
)
VOCAB = 256


def build(name: str, d_model: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {} if d_model is None else {"d_model": d_model}
    return create_model(name, VOCAB, VOCAB, input_kind="tokens", head="next-token", **extra).eval()


def state_bytes(state: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(state))


def repeat_batch(state: Any, batch: int) -> Any:
    """A batch-1 state repeated `batch` times along the batch dim (every leaf's dim 0)."""
    return tree_map(lambda t: t.repeat(batch, *([1] * (t.dim() - 1))).contiguous(), state)


@torch.no_grad()
def prefill(model: torch.nn.Module, length: int, batch: int = 1) -> tuple[Any, float]:
    """The state after a random context of `length` tokens, and the seconds it took."""
    ids = torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(length))
    started = time.perf_counter()
    _, state = model(ids)
    return state, time.perf_counter() - started


def time_interleaved_cpu(
    runs: dict[Any, Any], repeats: int
) -> dict[Any, tuple[float, float, float]]:
    """(median CPU seconds, minimum CPU seconds, median wall seconds) of each of `runs`, taking
    turns within every repeat; a first round warms up and is not counted."""
    cpu: dict[Any, list[float]] = {k: [] for k in runs}
    wall: dict[Any, list[float]] = {k: [] for k in runs}
    for rep in range(repeats + 1):
        for key, fn in runs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            if rep > 0:
                cpu[key].append(time.process_time() - c0)
                wall[key].append(time.perf_counter() - w0)
    return {k: (statistics.median(cpu[k]), min(cpu[k]), statistics.median(wall[k])) for k in runs}


def train_step_seconds(model: torch.nn.Module, length: int, batch: int, repeats: int) -> float:
    """Median wall seconds of forward + backward of a next-token loss at T = length."""
    model.train()
    ids = torch.randint(VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        loss.backward()

    seconds = time_fn(step, repeats=repeats, warmup=1, max_seconds=0.0)
    model.eval()
    return seconds


def run(
    models: list[str],
    positions: list[int],
    batches: list[int],
    repeats: int,
    prompt: int,
    train_lengths: list[int],
    train_batch: int,
    d_model: int | None = None,
    out_dir: Path | None = None,
    result_name: str = "generation",
) -> list[dict[str, Any]]:
    info = print_header("generation: step latency and state size against context position")
    rows: list[dict[str, Any]] = []
    token = {b: torch.zeros(b, dtype=torch.long) for b in batches}
    for name in models:
        model = build(name, d_model)
        states: dict[int, Any] = {}
        prefill_s: dict[int, float] = {}
        for p in positions:
            states[p], prefill_s[p] = prefill(model, p)
        prompt_s = {
            b: time_fn(lambda b=b, m=model: prefill(m, prompt, b), repeats=2) for b in batches
        }
        train_s = {t: train_step_seconds(model, t, train_batch, 1) for t in train_lengths}
        for b in batches:
            at = {p: repeat_batch(states[p], b) for p in positions}
            with torch.no_grad():
                runs = {p: (lambda s=at[p], m=model, x=token[b]: m.step(x, s)) for p in positions}
                timed = time_interleaved_cpu(runs, repeats)
            step_s = {p: timed[p][0] for p in positions}
            first, last = positions[0], positions[-1]
            for p in positions:
                rows.append(
                    {
                        "model": name,
                        "batch": b,
                        "position": p,
                        "step_ms": step_s[p] * 1e3,
                        "step_min_ms": timed[p][1] * 1e3,
                        "step_wall_ms": timed[p][2] * 1e3,
                        "min_ratio_to_first": timed[p][1] / timed[first][1],
                        "ratio_to_first": step_s[p] / step_s[first],
                        "state_bytes": state_bytes(at[p]),
                        "context_prefill_s_b1": prefill_s[p],
                        f"prefill_{prompt}_s": prompt_s[b],
                        **{f"train_step_s_T{t}_b{train_batch}": train_s[t] for t in train_lengths},
                    }
                )
            ratio = step_s[last] / step_s[first]
            low = timed[last][1] / timed[first][1]
            print(
                f"{name:26s} B={b:<3d} step (CPU) {step_s[first] * 1e3:8.3f} ms at {first}, "
                f"{step_s[last] * 1e3:8.3f} ms at {last} (x{ratio:.2f}; min x{low:.2f}); state "
                f"{state_bytes(at[first])} -> {state_bytes(at[last])} bytes",
                flush=True,
            )
        del states
    print()
    print(
        format_table(
            rows, ["model", "batch", "position", "step_ms", "ratio_to_first", "state_bytes"]
        )
    )
    csv_path, json_path = write_results(result_name, rows, info, out_dir)
    plot_path = plot(rows, (out_dir or RESULTS_DIR) / f"{result_name}.png")
    print(f"\nwrote {csv_path}, {json_path}" + (f", {plot_path}" if plot_path else ""))
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(5 * (len(batches) + 1), 4.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, b in zip(axes, batches, strict=False):
        for m in models:
            pts = [
                (r["position"], r["step_ms"]) for r in rows if r["model"] == m and r["batch"] == b
            ]
            ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set(xscale="log", yscale="log", xlabel="context position", ylabel="ms per step()")
        ax.set_title(f"step latency, batch {b}")
    ax = axes[-1]
    for m in models:
        pts = [
            (r["position"], r["state_bytes"]) for r in rows if r["model"] == m and r["batch"] == 1
        ]
        ax.plot(*zip(*pts, strict=True), marker="o", label=m)
    ax.set(xscale="log", yscale="log", xlabel="context position", ylabel="state bytes (batch 1)")
    ax.set_title("state size")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise SystemExit(
            f"benchmarks.generation: {option} takes comma-separated ints, got {text!r}"
        ) from err
    if not values or min(values) < 1:
        raise SystemExit(f"benchmarks.generation: {option} takes positive ints, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--positions", default="1024,4096,16384,65536")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per position")
    parser.add_argument("--prompt", type=int, default=4096, help="prompt length of the prefill")
    parser.add_argument("--train-lengths", default="1024,4096")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=None, help="width (default: the model's)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 models")
    parser.add_argument("--out-dir", "--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from memrnn.models import list_models

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise SystemExit(f"benchmarks.generation: unknown model(s) {unknown}")
    if args.quick:
        models = ["mingru-small", "transformer-small", "transformer-window-small"]
        args.positions, args.batches, args.prompt = "64,256", "1,4", 128
        args.train_lengths, args.train_batch, args.repeats = "64", 2, 3
    run(
        models,
        _ints(args.positions, "--positions"),
        _ints(args.batches, "--batches"),
        args.repeats,
        args.prompt,
        _ints(args.train_lengths, "--train-lengths"),
        args.train_batch,
        args.d_model,
        args.out_dir,
        "generation_quick" if args.quick else "generation",
    )


if __name__ == "__main__":
    main()
