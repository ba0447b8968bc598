"""Run one reproduction experiment: train every model of its config, evaluate, tabulate, plot.

    python -m experiments.run --list
    python -m experiments.run copy-first-input --quick                 # short run, seed 0
    python -m experiments.run copy-first-input --seeds 0 1 2           # the full experiment
    python -m experiments.run psmnist --data-dir ~/data/mnist          # tasks read from files
    python -m experiments.run <name> --models bmru,lru --out /tmp/x    # a subset, elsewhere
    python -m experiments.run copy-first-input --values 100,300        # part of the sweep

An experiment is `experiments/configs/<name>.yaml` (format in experiments/README.md). Each
(model, sweep value, seed) is one training run through `memrnn.train.train` in
`<out>/runs/<value>/<model>/seed<k>`, then evaluated on the test split and on each extra
evaluation of the config (e.g. longer sequences). The runner writes to `<out>` (default
experiments/results/<name>, or experiments/results/<name>-quick with --quick):
    results.csv  one row per (model, sweep value, seed, evaluation) with every metric
    results.md   mean ± std over seeds per model, the command, machine, seeds and run times,
                 and a separate "paper" column where the config quotes a published number
    results.png  the reported metric per model (vs the sweep value or evaluation length)
Notes written below the table of results.md under a `## ` heading are kept when it is written
again.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUN_KEYS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "grad_clip",
    "time_limit",
    "epsilon_schedule",
    "write_penalty",
    "min_lr_ratio",
    "eval_samples",
    "eval_batch_size",
    "log_every",
    "betas",
    "ckpt_every",
)
# Every run checkpoints `last` this often (steps) unless its config sets `ckpt_every`, so that
# a killed experiment loses at most this many steps of the run it was in.
CKPT_EVERY = 500


class ExperimentError(Exception):
    """A config or command-line mistake, reported on one line."""


# -- configs ------------------------------------------------------------------------------------
def list_experiments() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ExperimentError(
            f"no experiment {name!r}; expected one of {', '.join(list_experiments())}"
        )
    cfg = yaml.safe_load(path.read_text()) or {}
    for key in ("name", "task", "models"):
        if key not in cfg:
            raise ExperimentError(f"{path}: missing key {key!r}")
    if not isinstance(cfg["models"], dict) or not cfg["models"]:
        raise ExperimentError(f"{path}: `models` must map labels to model specs")
    cfg.setdefault("seeds", [0])
    return cfg


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (lists and scalars replace)."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def quick_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return merge({k: v for k, v in cfg.items() if k != "quick"}, cfg.get("quick", {}))


def sweep_values(cfg: dict[str, Any]) -> tuple[str | None, list[Any]]:
    sweep = cfg.get("sweep") or {}
    if len(sweep) > 1:
        raise ExperimentError(f"{cfg['name']}: `sweep` takes one task argument, got {list(sweep)}")
    if not sweep:
        return None, [None]
    ((key, values),) = sweep.items()
    return key, list(values)


def select_values(cfg: dict[str, Any], text: str) -> None:
    """Keep only the sweep values named in `text` (comma-separated, as the config spells them)."""
    key, values = sweep_values(cfg)
    if key is None:
        raise ExperimentError(f"--values: {cfg['name']} has no sweep")
    wanted = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in {str(x) for x in values}]
    if unknown:
        raise ExperimentError(f"--values: {unknown} not in the {key} sweep {values}")
    cfg["sweep"] = {key: [x for x in values if str(x) in wanted]}


def evaluations(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    evals = cfg.get("evals") or [{"name": "test"}]
    return [{"split": "test", **e} for e in evals]


def report_metrics(cfg: dict[str, Any], task: Any) -> list[str]:
    return list(cfg.get("report") or [task.primary_metric])


def check_names(cfg: dict[str, Any]) -> None:
    """Every model and task the config names is registered (without building datasets)."""
    import experiments.tasks  # noqa: F401 - registers the experiment-only tasks
    from memrnn.models.registry import list_models
    from memrnn.tasks.registry import list_tasks, task_kwargs

    if cfg["task"] not in list_tasks():
        raise ExperimentError(f"{cfg['name']}: unknown task {cfg['task']!r}")
    valid = task_kwargs(cfg["task"])
    key, _ = sweep_values(cfg)
    for arg in [*(cfg.get("task_kwargs") or {}), *([key] if key else [])]:
        if arg not in valid:
            raise ExperimentError(f"{cfg['name']}: task {cfg['task']!r} has no argument {arg!r}")
    models = list_models()
    for label, spec in cfg["models"].items():
        if spec.get("model") not in models:
            raise ExperimentError(
                f"{cfg['name']}: model {label!r} names unknown {spec.get('model')!r}"
            )


# -- one run ------------------------------------------------------------------------------------
def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


PARAMS_TOLERANCE = 0.1  # how far from `target_params` the closest width may land


def width_for_params(model: str, task: Any, overrides: dict[str, Any], target: int) -> int:
    """The d_model whose parameter count is closest to `target` (counts grow with d_model).
    Raises ExperimentError when even that count is more than 10% away, e.g. when parameters
    that do not grow with the width (a learned positional table) already pass the target."""
    from memrnn.models.registry import create_model_for_task

    def params(d: int) -> int:
        return count_params(create_model_for_task(model, task, **{**overrides, "d_model": d}))

    lo, hi = 2, 1024
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if params(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda d: abs(params(d) - target))
    if abs(params(best) - target) > PARAMS_TOLERANCE * target:
        raise ExperimentError(
            f"{model}: no d_model gives about {target} parameters (target_params); the closest, "
            f"d_model {best}, has {params(best)}. Make the parts that do not grow with the width "
            "smaller (e.g. positional_max_len) or change target_params"
        )
    return best


def model_overrides(cfg: dict[str, Any], spec: dict[str, Any], task: Any) -> dict[str, Any]:
    overrides = merge(cfg.get("model_overrides") or {}, spec.get("overrides") or {})
    target = spec.get("target_params", cfg.get("target_params"))
    if target and "d_model" not in (spec.get("overrides") or {}):
        overrides["d_model"] = width_for_params(spec["model"], task, overrides, int(target))
    return overrides


def spike_rates(model: torch.nn.Module) -> dict[str, float]:
    """Firing rates of the last evaluated batch, for spiking models (else {})."""
    net = getattr(model, "net", None)
    stats = net.spike_stats() if hasattr(net, "spike_stats") else {}
    rates = {k: v for k, v in stats.items() if k.endswith("/firing_rate")}
    if not rates:
        return {}
    return {
        "firing_rate": statistics.fmean(rates.values()),
        **{k.replace("/", "_"): v for k, v in rates.items()},
    }


def has_good_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds an intact `last` (or fallback) checkpoint to resume from."""
    from memrnn.train.checkpoint import CheckpointError, find_good_checkpoint

    try:
        find_good_checkpoint(run_dir, "last")
    except (FileNotFoundError, CheckpointError):
        return False
    return True


def run_one(
    cfg: dict[str, Any],
    label: str,
    sweep_key: str | None,
    sweep_value: Any,
    seed: int,
    run_dir: Path,
    device: str,
    data_dir: str | None,
    fresh: bool = False,
    commit: str = "",
) -> list[dict[str, Any]]:
    """Trains (or, unless `fresh`, resumes from the last intact checkpoint in `run_dir`, so a
    killed experiment redoes no finished run) and evaluates one (model, value, seed).
    The rows carry the commit the run started training at (`run_dir/commit.txt`, written when
    a run starts from step 0, or by the first invocation that finds a run folder without one),
    not that of a later invocation that only resumes or evaluates it."""
    from memrnn.train import build_task, evaluate, resolve_config, train
    from memrnn.train.runfolder import atomic_write_text

    spec = cfg["models"][label]
    task_kwargs = merge(cfg.get("task_kwargs") or {}, spec.get("task_kwargs") or {})
    if sweep_key:
        task_kwargs[sweep_key] = sweep_value
    if cfg.get("data_dir_arg") and data_dir:
        task_kwargs[cfg["data_dir_arg"]] = data_dir
    task = build_task(cfg["task"], **task_kwargs)
    overrides = model_overrides(cfg, spec, task)
    train_keys = merge(cfg.get("train") or {}, spec.get("train") or {})
    train_keys.setdefault("ckpt_every", CKPT_EVERY)
    unknown = sorted(set(train_keys) - set(RUN_KEYS))
    if unknown:
        raise ExperimentError(
            f"{cfg['name']}: unknown train key(s) {unknown}; expected some of {RUN_KEYS}"
        )
    resume = not fresh and has_good_checkpoint(run_dir)
    config = resolve_config(
        overrides={
            **train_keys,
            "model": spec["model"],
            "task": cfg["task"],
            "out": str(run_dir),
            "seed": seed,
            "device": device,
            "progress": False,
            "tensorboard": False,
            "model_overrides": overrides,
            "task_kwargs": task_kwargs,
            "resume": resume,
            # A folder without an intact checkpoint holds nothing worth keeping.
            "overwrite": not resume,
        },
        overrides_are_text=False,
    )
    # Before training, so that a run killed midway keeps the commit it started at; a new
    # run's overwrite removes only the run files, not this one.
    stamp = run_dir / "commit.txt"
    if commit and (not resume or not stamp.is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, commit + "\n")
    trained_at = stamp.read_text().strip() if stamp.is_file() else commit
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    model, task = result.model, result.task
    rows = []
    for ev in evaluations(cfg):
        # A model may skip evaluations it cannot afford (the full-attention Transformer at
        # T = 100k: its cost grows with T^2); the table shows "–" there.
        if ev["name"] in (spec.get("skip_evals") or []):
            continue
        eval_started = time.perf_counter()
        loss, metrics = evaluate(
            model,
            task,
            ev["split"],
            samples=int(ev.get("samples", 512)),
            batch_size=int(ev.get("batch_size", 128)),
            seq_len=ev.get("seq_len"),
            device=device,
        )
        rows.append(
            {
                "experiment": cfg["name"],
                "model": label,
                "model_name": spec["model"],
                "sweep": sweep_key or "",
                "value": "" if sweep_value is None else sweep_value,
                "seed": seed,
                "eval": ev["name"],
                "eval_seq_len": ev.get("seq_len") or "",
                "params": count_params(model),
                "d_model": overrides.get("d_model", ""),
                "steps": result.step,
                "train_s": round(result.train_time, 2),
                "wall_s": round(wall, 2),
                "eval_s": round(time.perf_counter() - eval_started, 2),
                "loss": loss,
                **metrics,
                **spike_rates(model),
                "commit": trained_at,
            }
        )
    return rows


# -- outputs ------------------------------------------------------------------------------------
def _fmt(values: list[float], scale: float) -> str:
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}"


def summary_table(cfg: dict[str, Any], rows: list[dict[str, Any]], metrics: list[str]) -> str:
    sweep_key, values = sweep_values(cfg)
    evals = [e["name"] for e in evaluations(cfg)]
    scale = float(cfg.get("scale", 1.0))
    columns = []
    for value in values:
        for ev in evals:
            for metric in metrics:
                parts = [
                    f"{sweep_key}={value}" if sweep_key else "",
                    ev if len(evals) > 1 else "",
                    metric,
                ]
                columns.append((value, ev, metric, " ".join(p for p in parts if p)))
    paper = cfg.get("paper") or {}
    head = ["model", "params", *(c[3] for c in columns)] + (["paper"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in cfg["models"]:
        mine = [r for r in rows if r["model"] == label]
        if not mine:
            continue
        cells = [label, str(mine[0]["params"])]
        for value, ev, metric, _ in columns:
            sel = [
                r.get(metric)
                for r in mine
                if r["eval"] == ev and (value is None or str(r["value"]) == str(value))
            ]
            cells.append(_fmt(sel, scale))
        if paper:
            cells.append(str(paper.get(label, "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    cfg: dict[str, Any], rows: list[dict[str, Any]], metrics: list[str], path: Path
) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sweep_key, values = sweep_values(cfg)
    evals = evaluations(cfg)
    scale = float(cfg.get("scale", 1.0))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    labels = [m for m in cfg["models"] if any(r["model"] == m for r in rows)]
    for ax, metric in zip(axes[0], metrics, strict=True):
        if sweep_key or len(evals) > 1:
            if sweep_key:
                xs = values
                keys = [(v, evals[0]["name"]) for v in values]
                ax.set_xlabel(sweep_key)
            else:
                xs = [e.get("seq_len") or cfg.get("train_len_label", 0) for e in evals]
                keys = [(None, e["name"]) for e in evals]
                ax.set_xlabel("evaluation sequence length")
                if all(isinstance(x, int | float) and x > 0 for x in xs):
                    ax.set_xscale("log")
            for label in labels:
                means, stds = [], []
                for value, ev in keys:
                    sel = [
                        r.get(metric)
                        for r in rows
                        if r["model"] == label
                        and r["eval"] == ev
                        and (value is None or str(r["value"]) == str(value))
                    ]
                    sel = [s * scale for s in sel if s is not None and not math.isnan(s)]
                    means.append(statistics.fmean(sel) if sel else float("nan"))
                    stds.append(statistics.stdev(sel) if len(sel) > 1 else 0.0)
                ax.errorbar(xs, means, yerr=stds, marker="o", ms=3, capsize=2, label=label)
        else:
            means = []
            for label in labels:
                sel = [r.get(metric) for r in rows if r["model"] == label]
                sel = [s * scale for s in sel if s is not None and not math.isnan(s)]
                means.append(statistics.fmean(sel) if sel else float("nan"))
            ax.bar(range(len(labels)), means)
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(metric + (f" (×{scale:g})" if scale != 1 else ""))
        ax.grid(True, alpha=0.3)
    if sweep_key or len(evals) > 1:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(cfg["name"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """The run a results row belongs to: (model label, sweep value as text, seed)."""
    return row["model"], str(row["value"]), int(row["seed"])


def run_time(rows: list[dict[str, Any]]) -> float:
    """Training time summed over the runs of `rows` (each run once, whatever its evals)."""
    runs = {run_key(r): float(r["train_s"]) for r in rows}
    return sum(runs.values())


def omitted(config: tuple[list[Any], ...], ran: tuple[list[Any], ...]) -> str:
    """What a run left out of its config's models, sweep values and seeds ('' for none)."""
    parts = []
    for name, full, done in zip(("models", "values", "seeds"), config, ran, strict=True):
        if set(map(str, full)) - set(map(str, done)):
            parts.append(f"{name} {', '.join(map(str, done))} of {', '.join(map(str, full))}")
    return "; ".join(parts)


def _cell(text: str) -> Any:
    """A results.csv cell back as the number it was written from (text stays text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def earlier_rows(path: Path, name: str, redone: set[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """The rows of an earlier `results.csv` of experiment `name`, less the runs in `redone`.

    A run is (model label, sweep value as text, seed); its rows are dropped when this
    invocation trains or evaluates it again.
    """
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    other = sorted({str(r.get("experiment")) for r in rows} - {name})
    if other:
        raise ExperimentError(f"--merge: {path} holds results of {other}, not of {name!r}")
    return [r for r in rows if run_key(r) not in redone]


def covered(cfg: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`cfg` narrowed to the models and sweep values that `rows` hold, in the config's order."""
    out = dict(
        cfg, models={m: s for m, s in cfg["models"].items() if any(r["model"] == m for r in rows)}
    )
    key, values = sweep_values(cfg)
    if key is not None:
        present = {str(r["value"]) for r in rows}
        out["sweep"] = {key: [v for v in values if str(v) in present]}
    return out


def write_outputs(
    cfg: dict[str, Any],
    rows: list[dict[str, Any]],
    out: Path,
    meta: dict[str, Any],
    metrics: list[str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot_path = plot(cfg, rows, metrics, out / "results.png") if rows else None
    if meta["quick"]:
        kind = "QUICK (short) run: not a reproduction"
    elif meta.get("partial"):
        kind = f"PARTIAL run ({meta['partial']})"
    else:
        kind = "full run"
    lines = [
        f"# {cfg['name']} — {kind}",
        "",
        (cfg.get("description") or "").strip(),
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}",
        f"- torch {meta['torch']}, commit {meta['commit']} (at the start; each run's is in "
        f"results.csv), finished {meta['date']}",
        f"- seeds: {', '.join(map(str, meta['seeds']))}; training steps per run: "
        f"{cfg.get('train', {}).get('steps', 'default')}; wall time of this invocation "
        f"{meta['wall_s']:.0f} s; training time summed over runs {run_time(rows):.0f} s "
        "(a resumed run counts its earlier invocations too)",
        f"- task: `{cfg['task']}` {cfg.get('task_kwargs') or ''}".rstrip(),
    ]
    if meta.get("kept"):
        lines.append(f"- merged: {meta['kept']}")
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    lines += [
        "",
        f"Values: mean ± std over seeds of {', '.join(metrics)}"
        + (f" (×{cfg['scale']:g})" if cfg.get("scale", 1) != 1 else "")
        + ".",
    ]
    if cfg.get("paper"):
        lines.append(f"The paper column is quoted, not measured here: {cfg.get('paper_note', '')}")
    lines += ["", summary_table(cfg, rows, metrics) if rows else "(no runs)", ""]
    if plot_path:
        lines += [f"![{cfg['name']}](results.png)", ""]
    notes = written_notes(out / "results.md")
    if notes:
        lines += [notes, ""]
    (out / "results.md").write_text("\n".join(lines))


def written_notes(path: Path) -> str:
    """The part of an earlier results.md from its first `## ` heading on: notes written by
    hand below the generated table, which a later invocation (e.g. --merge) keeps."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""
    at = text.find("\n## ")
    return text[at + 1 :].rstrip() if at >= 0 else ""


def machine() -> str:
    import os
    import platform

    from benchmarks.common import cpu_name

    load = ""
    try:
        load = ", load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_name()} ({os.cpu_count()} cores{load}){gpu}, {platform.platform()}"


# -- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", help="experiment name (see --list) or a YAML path")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--quick", action="store_true", help="the config's short-run version")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds (default: the config's; --quick: its first)",
    )
    parser.add_argument("--models", default="", help="comma-separated model labels (default all)")
    parser.add_argument(
        "--values",
        default="",
        help="comma-separated subset of the sweep's values, e.g. 100,300 (default all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default experiments/results/<name>[-quick])",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the output folder's earlier results.csv rows of the runs this invocation "
        "does not do, so that partial invocations add up to one table",
    )
    parser.add_argument("--data-dir", default=None, help="folder of the dataset files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="retrain every run from scratch (default: resume each run from its checkpoint)",
    )
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name in list_experiments():
            cfg = load_config(name)
            print(f"{name:24s} {(cfg.get('title') or '').strip()}")
        return 0
    from benchmarks.common import git_commit

    from memrnn.runtime import keep_freed_memory

    keep_freed_memory()  # as `memrnn train` does (memrnn.runtime)

    import experiments.tasks  # noqa: F401 - registers the experiment-only tasks
    from memrnn.train import UsageError

    try:
        cfg = load_config(args.name)
        if args.quick:
            cfg = quick_config(cfg)
        whole = (list(cfg["models"]), sweep_values(cfg)[1], cfg.get("seeds", [0]))
        check_names(cfg)
        labels = [m for m in args.models.split(",") if m] or list(cfg["models"])
        unknown = [m for m in labels if m not in cfg["models"]]
        if unknown:
            raise ExperimentError(
                f"unknown model label(s) {unknown}; config has {list(cfg['models'])}"
            )
        full = copy.deepcopy(cfg)
        cfg["models"] = {m: cfg["models"][m] for m in labels}
        if args.values:
            select_values(cfg, args.values)
        seeds = args.seeds or (cfg["seeds"][:1] if args.quick else cfg["seeds"])
        out = args.out or RESULTS_DIR / (cfg["name"] + ("-quick" if args.quick else ""))
        command = "python -m experiments.run " + " ".join(sys.argv[1:] if argv is None else argv)
        if cfg.get("data_dir_arg") and not (args.data_dir and Path(args.data_dir).is_dir()):
            message = (
                f"{cfg['name']}: needs its dataset files: pass --data-dir FOLDER "
                f"({(cfg.get('data_note') or '').strip()})"
            )
            if args.data_dir:
                message += f"; {args.data_dir!r} is not a folder"
            print(f"skipped: {message}", file=sys.stderr)
            return 0 if args.quick else 2
        sweep_key, values = sweep_values(cfg)
        # The code the runs use: the commit when they start (one finishing later may see more).
        commit = git_commit()
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []
        metrics: list[str] | None = None
        for value in values:
            for label in cfg["models"]:
                for seed in seeds:
                    tag = "all" if value is None else f"{sweep_key}{value}"
                    run_dir = out / "runs" / tag / label / f"seed{seed}"
                    new = run_one(
                        cfg,
                        label,
                        sweep_key,
                        value,
                        seed,
                        run_dir,
                        args.device,
                        args.data_dir,
                        fresh=args.fresh,
                        commit=commit,
                    )
                    rows += new
                    if metrics is None:
                        from memrnn.tasks.registry import get_task_class

                        metrics = report_metrics(cfg, get_task_class(cfg["task"]))
                    shown = ", ".join(
                        f"{r['eval']} {m}={r.get(m, float('nan')):.4g}"
                        for r in new
                        for m in metrics
                    )
                    print(
                        f"[{time.perf_counter() - started:7.0f} s] {label} {tag} seed {seed}: "
                        f"{shown} ({new[0]['params']} params, {new[0]['train_s']:.0f} s)",
                        flush=True,
                    )
        ran = (list(cfg["models"]), sweep_values(cfg)[1], seeds)
        kept: list[dict[str, Any]] = []
        if args.merge:
            redone = {
                (m, "" if v is None else str(v), s) for m in ran[0] for v in ran[1] for s in seeds
            }
            kept = earlier_rows(out / "results.csv", cfg["name"], redone)
        merged = ""
        if kept:
            rows = kept + rows
            cfg = covered(full, rows)
            seeds = sorted({r["seed"] for r in rows})
            ran = (list(cfg["models"]), sweep_values(cfg)[1], seeds)
            runs = len({run_key(r) for r in rows})
            grid = len(ran[0]) * len(ran[1]) * len(seeds)
            merged = (
                f"{len({run_key(r) for r in kept})} runs kept from "
                "the folder's earlier results.csv (--merge)"
                + ("" if runs == grid else f"; {runs} of the {grid} runs of that grid")
            )
        meta = {
            "quick": args.quick,
            "command": command,
            "machine": machine(),
            "torch": torch.__version__,
            "commit": commit,
            "seeds": seeds,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "wall_s": time.perf_counter() - started,
            "note": cfg.get("note"),
            "partial": omitted(whole, ran),
            "kept": merged,
        }
        write_outputs(cfg, rows, out, meta, metrics or [])
        print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")
    except (ExperimentError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
