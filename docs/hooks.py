"""MkDocs hooks: pages generated at build time from the repository, so that they cannot drift.

- `cli.md`: the marker `<!-- memrnn-cli -->` is replaced by the reference of every `memrnn`
  command, written from the argparse parsers of `memrnn.cli` and, for `memrnn train`, from the
  fields of `memrnn.train.config.TrainConfig` (its options are parsed from that dataclass).
- `results/<experiment>/index.md`: one page per committed full experiment run
  (`experiments/results/<name>/results.md` whole, with its plot; each `mean ± std` is printed
  again from the per-seed results.csv at the precision its spread needs), and
  `results/benchmarks/index.md`: a curated table of every committed benchmark with its machine,
  plot and a link to the raw CSV, then what the runs measured (from benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CLI_MARKER = "<!-- memrnn-cli -->"
EXPERIMENTS = ROOT / "experiments" / "results"
BENCHMARKS = ROOT / "benchmarks" / "results"

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def experiment_names() -> list[str]:
    """Full (not quick) experiment runs with a committed results.md."""
    if not EXPERIMENTS.is_dir():
        return []
    return sorted(
        p.name
        for p in EXPERIMENTS.iterdir()
        if (p / "results.md").is_file() and not p.name.endswith("-quick")
    )


def experiment_page(text: str, rows: list[dict[str, str]] | None = None) -> str:
    """An experiment's results.md as a page: its prose, run details, tables and plot, with each
    `mean ± std` cell recomputed from the per-seed `rows` of results.csv at the precision its
    spread needs (results.md rounds to 4 significant digits, which prints 0.99998 as 1)."""
    if not rows:
        return text.strip() + "\n"
    scale = 100.0 if "(×100)" in text else 1.0
    out: list[str] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            out.append(line)
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            for i, cell in enumerate(cells[1:], 1):
                if "±" in cell and i < len(header):
                    values = _seed_values(rows, cells[0], header[i])
                    if values:
                        cells[i] = mean_std_text([v * scale for v in values])
            line = "| " + " | ".join(cells) + " |"
        out.append(line)
    return "\n".join(out).strip() + "\n"


def _seed_values(rows: list[dict[str, str]], model: str, column: str) -> list[float]:
    """The per-seed values of one table cell: rows of `model` whose metric is the column's last
    word and whose evaluation (`T=1k`) or sweep value (`seq_len=300`) is its first, if any."""
    *where, metric = column.split()
    label = " ".join(where)
    by_seed: dict[str, list[float]] = {}
    for row in rows:
        if row.get("model") != model or not row.get(metric):
            continue
        if label and label not in (row.get("eval"), f"{row.get('sweep')}={row.get('value')}"):
            continue
        by_seed.setdefault(row.get("seed", ""), []).append(float(row[metric]))
    # One value per seed, or the cell is not this simple and stays as results.md has it.
    if not by_seed or any(len(v) != 1 for v in by_seed.values()):
        return []
    return [v[0] for v in by_seed.values()]


def mean_std_text(values: list[float]) -> str:
    """`mean ± std` with the std to two significant digits and the mean to the same decimal
    place, so that a mean just below 1 (0.99998) is not printed as 1."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if std == 0.0:
        return f"{mean:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    if abs(mean) >= 1e4 or decimals > 12:
        return f"{mean:.4g} ± {std:.2g}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _machine_text(path: Path) -> str:
    """`CPU, N cores, N torch threads, torch X` of a benchmark's JSON file ('' if none)."""
    meta = path.with_suffix(".json")
    if not meta.is_file():
        return ""
    machine = json.loads(meta.read_text()).get("machine") or {}
    if not isinstance(machine, dict):
        return ""
    parts = [str(machine.get("cpu", "")).strip()]
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} cores")
    if machine.get("torch_threads"):
        parts.append(f"{machine['torch_threads']} torch threads")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    if machine.get("cuda"):
        parts.append(f"GPU {machine['cuda']}")
    return ", ".join(p for p in parts if p)


def _number(value: str, digits: int = 3) -> str:
    try:
        number = float(value)
    except ValueError:
        return value.replace("|", "\\|")
    if value.strip().lstrip("-").isdigit():
        return value
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}g}"


# The curated view of each committed benchmark: a pivot (rows x columns -> one value) or the
# listed columns, in the order shown. Benchmarks not listed here are shown with every column.
BENCHMARK_VIEWS: dict[str, dict[str, Any]] = {
    "units": {
        "title": "Training step: recurrent over parallel mode of the same weights",
        "pivot": ("unit", "T", "speedup"),
        "format": "{:.1f}x",
        "note": "recurrent-mode time / parallel-mode time of one training step (B = 16, "
        "D = 128); the torch.nn GRU and LSTM have one mode and are left out.",
        "skip": {"impl": ("torch.nn.GRU", "torch.nn.LSTM")},
    },
    "scan": {
        "title": "linear_scan against a Python loop",
        "columns": [
            "T",
            "backend",
            "forward_ms",
            "fwd_bwd_ms",
            "fwd_vs_proxy",
            "fwd_speedup_vs_loop",
            "fwd_bwd_speedup_vs_loop",
        ],
        "skip": {"backend": ("reference",)},
    },
    "memory": {
        "title": "Extra memory of one training step, bytes per B·T·D element",
        "pivot": ("unit", "T", "bytes_per_elem"),
        "format": "{:.0f}",
        "only": {"mode": ("parallel",)},
    },
    "inference": {
        "title": "One step() at B = 1: microseconds per token by position",
        "pivot": ("unit", "position", "us_per_step"),
        "format": "{:.0f}",
        "only": {"B": ("1",)},
    },
    "generation": {
        "title": "One step() of each small model at B = 16: milliseconds by context position",
        "pivot": ("model", "position", "step_ms"),
        "format": "{:.3g}",
        "only": {"batch": ("16",)},
        "note": "the state bytes, batch 1, the prefill and training-step times are in the CSV.",
    },
    "brc": {
        "title": "BRC and nBRC: the compiled sequence kernel against the torch step loop",
        "columns": ["cell", "case", "pass", "batch", "T", "seconds", "speedup_vs_loop"],
        "only": {"path": ("native",)},
        "note": "seconds of the compiled kernel for one step of its pass; speedup_vs_loop: the "
        "torch step loop's time over it, measured in the same run.",
    },
    "peers": {
        "title": "memrnn against peer implementations (outputs checked equal first)",
        "columns": [
            "bench",
            "T",
            "impl",
            "forward_ms",
            "fwd_bwd_ms",
            "memrnn_speedup_fwd",
            "memrnn_speedup_fwd_bwd",
        ],
    },
    "lmu": {
        "title": "Parallel LMU, psMNIST shape: one training step by mode",
        "columns": [
            "model",
            "mode",
            "params",
            "seconds",
            "agrees",
            "speedup_vs_recurrent",
            "speedup_vs_lstm",
        ],
    },
    "src": {
        "title": "SRC network (3 x 128, B = 64, 220 steps), float32",
        "columns": ["pass", "path", "seconds", "steps_per_s", "speedup_vs_loop"],
    },
    "src_f64": {
        "title": "The same in float64",
        "columns": ["pass", "path", "seconds", "steps_per_s", "speedup_vs_loop"],
    },
    "lmu_crossover": {
        "title": "Parallel LMU: FFT over direct convolution time",
        "pivot": ("order", "steps", "fft_over_raw"),
        "format": "{:.2f}",
    },
}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _keep(row: dict[str, str], view: dict[str, Any]) -> bool:
    if any(row.get(k) in v for k, v in view.get("skip", {}).items()):
        return False
    return all(row.get(k) in v for k, v in view.get("only", {}).items())


def benchmark_table(name: str, rows: list[dict[str, str]]) -> list[str]:
    view = BENCHMARK_VIEWS.get(name, {})
    rows = [r for r in rows if _keep(r, view)]
    if "pivot" in view:
        index, column, value = view["pivot"]
        cols = list(dict.fromkeys(r[column] for r in rows))
        keys = list(dict.fromkeys(r[index] for r in rows))
        cells = {(r[index], r[column]): r[value] for r in rows}
        head = [index] + [f"{column} = {c}" for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
        for key in keys:
            shown = []
            for c in cols:
                raw = cells.get((key, c), "")
                try:
                    shown.append(view["format"].format(float(raw)))
                except ValueError:
                    shown.append(raw or "–")
            lines.append(f"| {key} | " + " | ".join(shown) + " |")
        return lines
    columns = view.get("columns") or list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_number(row.get(c, "")) for c in columns) + " |")
    return lines


def _measured_section() -> str:
    """The section of benchmarks/README.md that says what the committed runs measured."""
    readme = ROOT / "benchmarks" / "README.md"
    if not readme.is_file():
        return ""
    text = readme.read_text(encoding="utf-8")
    start = text.find(MEASURED_HEADING)
    if start < 0:
        return ""
    body = text[start + len(MEASURED_HEADING) :]
    end = body.find("\n## ")
    return (body if end < 0 else body[:end]).strip()


MEASURED_HEADING = "## What the committed runs measured"


def benchmark_names() -> list[str]:
    if not BENCHMARKS.is_dir():
        return []
    return [p.stem for p in sorted(BENCHMARKS.glob("*.csv")) if not p.stem.endswith("_quick")]


def benchmark_page() -> str:
    """The committed benchmark results (benchmarks/results/NAME.csv): a curated table of each,
    the machine it ran on (NAME.json), its plot (NAME.png) and a link to the raw CSV file; then
    what the runs measured, from benchmarks/README.md."""
    lines = [
        "# Benchmark results",
        "",
        "Generated from the committed files in `benchmarks/results/`; each table is one run of",
        "`python -m benchmarks NAME` on the machine it names, with speed-ups measured within the",
        "same run. The raw CSV file of each holds every column; `benchmarks/README.md` in the",
        "repository explains them.",
        "",
    ]
    for name in benchmark_names():
        path = BENCHMARKS / f"{name}.csv"
        rows = _csv_rows(path)
        if not rows:
            continue
        view = BENCHMARK_VIEWS.get(name, {})
        lines += [f"## {name}", ""]
        if view.get("title"):
            lines += [f"{view['title']}.", ""]
        machine = _machine_text(path)
        raw = f"[{name}.csv]({name}.csv)"
        lines += [f"Machine: {machine}. Raw data: {raw}." if machine else f"Raw data: {raw}.", ""]
        lines += benchmark_table(name, rows) + [""]
        if view.get("note"):
            lines += [view["note"][0].upper() + view["note"][1:], ""]
        if path.with_suffix(".png").is_file():
            lines += [f"![{name}]({name}.png)", ""]
    measured = _measured_section()
    if measured:
        lines += ["## What the runs measured", "", measured, ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    for name in experiment_names():
        folder = EXPERIMENTS / name
        table = folder / "results.csv"
        rows = _csv_rows(table) if table.is_file() else None
        page = experiment_page((folder / "results.md").read_text(encoding="utf-8"), rows)
        files.append(File.generated(config, f"results/{name}/index.md", content=page))
        if (folder / "results.png").is_file():
            files.append(
                File.generated(
                    config, f"results/{name}/results.png", abs_src_path=str(folder / "results.png")
                )
            )
    if BENCHMARKS.is_dir():
        page = benchmark_page()
        files.append(File.generated(config, "results/benchmarks/index.md", content=page))
        for name in benchmark_names():
            for path in (BENCHMARKS / f"{name}.csv", BENCHMARKS / f"{name}.png"):
                if path.is_file():
                    files.append(
                        File.generated(
                            config, f"results/benchmarks/{path.name}", abs_src_path=str(path)
                        )
                    )
    return files


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line, wrapped at 88 columns so that no part of it hides under the copy button."""
    text = " ".join(parser.format_usage().split())[len("usage: ") :]
    prog = " ".join(parser.prog.split())
    return textwrap.fill(
        text,
        88,
        subsequent_indent=" " * (len(prog) + 1),
        break_on_hyphens=False,
        break_long_words=False,
    )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    """option | description of every shown option (the help says its default or that it is
    required; options hidden with argparse.SUPPRESS are left out)."""
    rows = ["| option | description |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            flags += f" `{action.metavar or action.dest.upper()}`"
        help_text = action.help or ""
        if action.choices:
            help_text += f"; one of {', '.join(f'`{c}`' for c in action.choices)}"
        rows.append(f"| {flags} | {_cell(help_text)} |")
    return rows


def train_reference() -> str:
    """`memrnn train`'s options by group, from memrnn.cli_help (as `memrnn train --help`)."""
    from memrnn.cli_help import TRAIN_SYNOPSIS, train_option_groups

    usage, _, about = TRAIN_SYNOPSIS.partition("\n\n")
    lines = [
        "```text",
        usage.replace("usage: ", "", 1).replace("\n       ", "\n"),
        "```",
        "",
        " ".join(about.split()),
        "",
    ]
    for group in train_option_groups():
        lines += [f"### {group.title.capitalize()} options", "", group.intro, ""]
        lines += ["| option | type | default | description |", "|---|---|---|---|"]
        for option in group.options:
            default = (
                f"`{option.default}`"
                if option.default not in ("", "required")
                else (option.default)
            )
            kind = f"`{option.type}`" if option.type else ""
            lines.append(f"| `{option.flag}` | {kind} | {default} | {_cell(option.description)} |")
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """Every `memrnn` command, as its parser defines it: commands added to memrnn.cli appear
    here without a change to this file."""
    from memrnn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    parts = []
    for name, p in sub.choices.items():
        parts.append(f"## memrnn {name}\n")
        if helps.get(name):
            parts.append(f"{helps[name][0].upper()}{helps[name][1:]}.\n")
        if name == "train":
            parts.append(train_reference() + "\n")
            continue
        parts.append(f"```text\n{_usage(p)}\n```\n")
        rows = _option_rows(p)
        if len(rows) > 2:
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, cli_reference())
    return markdown
