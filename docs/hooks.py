"""MkDocs hooks: pages generated at build time from the repository, so that they cannot drift.

- `cli.md`: the marker `<!-- memrnn-cli -->` is replaced by the reference of every `memrnn`
  command, written from the argparse parsers of `memrnn.cli` and, for `memrnn train`, from the
  fields of `memrnn.train.config.TrainConfig` (its options are parsed from that dataclass).
- `results/<experiment>/index.md`: one page per committed full experiment run
  (`experiments/results/<name>/results.md`: its heading, run details and tables, with its plot),
  and `results/benchmarks/index.md`: every committed benchmark CSV as a table, with its machine
  and plot.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
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


def experiment_page(text: str) -> str:
    """The heading, run details, tables and plot of an experiment's results.md.

    Prose paragraphs are left out: the results page of the site says what the tables show.
    """
    keep = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("#", "- ", "|", "![", "Values")) or not stripped:
            keep.append(line)
    out: list[str] = []
    for line in keep:
        # Collapse the blank lines left where prose was dropped.
        if not line.strip() and out and not out[-1].strip():
            continue
        out.append(line)
    if any(line.startswith("|") and "| paper" in line for line in out):
        # Say so under the table, in place of the dropped sentence that did.
        end = max(i for i, line in enumerate(out) if line.startswith("|"))
        note = "The `paper` column is quoted from the publication, not measured here."
        out[end + 1 : end + 1] = ["", note]
    return "\n".join(out).strip() + "\n"


def _cell(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value.replace("|", "\\|")
    if value.strip().lstrip("-").isdigit():
        return value
    return f"{number:.0f}" if abs(number) >= 1000 else f"{number:.4g}"


def benchmark_page() -> str:
    """Every committed benchmark result (benchmarks/results/NAME.csv) as a table, with the
    machine it ran on (NAME.json) and its plot (NAME.png)."""
    lines = [
        # Wide tables: the page gives the table of contents' column to them.
        "---",
        "hide:",
        "  - toc",
        "---",
        "",
        "# Benchmark results",
        "",
        "Generated from the committed files in `benchmarks/results/`; each table is one run of",
        "`python -m benchmarks NAME` (times in seconds or milliseconds as the column says,",
        "speed-ups measured within the same run). See the Results summary for what they show.",
        "",
    ]
    for path in sorted(BENCHMARKS.glob("*.csv")):
        if path.stem.endswith("_quick"):
            continue
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            continue
        lines += [f"## {path.stem}", ""]
        meta = path.with_suffix(".json")
        if meta.is_file():
            machine = json.loads(meta.read_text()).get("machine") or {}
            if isinstance(machine, dict) and machine:
                keys = ("cpu", "cpu_count", "torch_threads", "torch", "commit", "cuda")
                text = ", ".join(f"{k} {machine[k]}" for k in keys if k in machine)
                lines += [f"Machine: {text}.", ""]
        lines.append("| " + " | ".join(rows[0]) + " |")
        lines.append("|" + "---|" * len(rows[0]))
        for row in rows[1:]:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        lines.append("")
        if path.with_suffix(".png").is_file():
            lines += [f"![{path.stem}]({path.stem}.png)", ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    for name in experiment_names():
        folder = EXPERIMENTS / name
        page = experiment_page((folder / "results.md").read_text(encoding="utf-8"))
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
        for png in sorted(BENCHMARKS.glob("*.png")):
            if png.stem.endswith("_quick"):
                continue
            files.append(
                File.generated(config, f"results/benchmarks/{png.name}", abs_src_path=str(png))
            )
    return files


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split())[len("usage: ") :]


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | default | description |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.metavar is not None or action.nargs != 0:
            flags += f" `{(action.metavar or action.dest).upper()}`"
        default = "" if action.default in (None, False) else f"`{action.default}`"
        if action.required:
            default = "required"
        help_text = (action.help or "").replace("|", "\\|")
        if action.choices:
            help_text += f" (one of {', '.join(map(str, action.choices))})"
        rows.append(f"| {flags} | {default} | {help_text} |")
    return rows


def _train_field_docs() -> dict[str, str]:
    """Field name -> description, from the `Args:` list of TrainConfig's docstring."""
    from memrnn.train.config import TrainConfig

    docs: dict[str, str] = {}
    current: list[str] = []
    for line in (TrainConfig.__doc__ or "").splitlines():
        head, sep, rest = line.strip().partition(": ")
        names = [n.strip() for n in head.split(",")]
        # An entry starts at the first indentation level; deeper lines continue it.
        if sep and not line.startswith("     ") and all(n.isidentifier() for n in names):
            current = names
            for n in names:
                docs[n] = rest
        elif line.strip() and current:
            for n in current:
                docs[n] += " " + line.strip()
    return docs


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    return text or str(tp).replace("typing.", "")


def train_reference() -> str:
    from memrnn.train.config import TrainConfig

    docs = _train_field_docs()
    lines = [
        "`memrnn train [--config FILE.yaml] [--KEY VALUE ...]` takes every field below as "
        "`--key value` (dashes or underscores), `--flag` / `--no-flag` for booleans, "
        "`--model.FIELD VALUE` for a model option and `--task.ARG VALUE` for a task argument.",
        "",
        "| option | type | default | description |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model_overrides", "task_kwargs"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        shown = "" if default is None else f"`{default}`"
        option = "--" + f.name.replace("_", "-")
        description = docs.get(f.name, "")
        if not description:
            # Fields documented inside another field's entry point there.
            owner = next((k for k, text in docs.items() if f.name in text), None)
            description = f"see `--{owner.replace('_', '-')}`" if owner else ""
        description = description.replace("|", "\\|")
        lines.append(f"| `{option}` | `{_type_name(f.type)}` | {shown} | {description} |")
    return "\n".join(lines)


def cli_reference() -> str:
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
        parts.append(f"```text\n{_usage(p).replace('usage: ', '')}\n```\n")
        rows = _option_rows(p)
        if len(rows) > 2:
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, cli_reference())
    return markdown
