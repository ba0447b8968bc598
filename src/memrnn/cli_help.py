"""The options of `memrnn train`, described once for `memrnn train --help` and the generated
command-line reference of the documentation.

`memrnn train` parses its options from the fields of `memrnn.train.TrainConfig` (training),
`memrnn.models.ModelConfig` (`--model.FIELD`) and each task's constructor (`--task.ARG`); their
descriptions are the `Args:` entries of those classes' docstrings, and their defaults are the
dataclass defaults and signature defaults, so neither can drift from the code.

    >>> groups = train_option_groups()
    >>> [g.title for g in groups]
    ['model', 'task', 'training']
    >>> any(o.flag == "--debug-nan-at-step" for g in groups for o in g.options)
    False
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

# TrainConfig fields that are not options of their own (`--model.X`, `--task.X` fill them) or
# that exist for the test suite only (still accepted, not shown).
NOT_SHOWN = {"model", "task", "model_overrides", "task_kwargs", "debug_nan_at_step"}
# ModelConfig fields that every run takes from its task.
FROM_THE_TASK = {"input_size", "output_size", "input_kind", "name"}


@dataclass(frozen=True)
class Option:
    flag: str
    type: str
    default: str  # "" when there is none; "required" for a required option
    description: str


@dataclass(frozen=True)
class OptionGroup:
    title: str
    intro: str
    options: list[Option]


def docstring_args(cls: type) -> dict[str, str]:
    """Name -> description of each entry of the `Args:` list of `cls`'s docstring; an entry
    naming several fields (`lr, weight_decay, betas: ...`) describes each of them."""
    docs: dict[str, str] = {}
    current: list[str] = []
    lines = (cls.__doc__ or "").splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    base = min(indents) if indents else 0
    for line in lines:
        head, sep, rest = line.strip().partition(": ")
        names = [n.strip() for n in head.split(",")]
        indent = len(line) - len(line.lstrip())
        first_level = line.lstrip().startswith("Args:") or indent <= base
        if sep and first_level and all(n.isidentifier() for n in names):
            current = names
            for name in names:
                # An entry shared by several fields says which ones it covers.
                shared = f"({', '.join(names)}) " if len(names) > 1 else ""
                docs[name] = shared + rest.strip()
        elif line.strip() and current:
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def _type_text(tp: Any) -> str:
    if isinstance(tp, str):
        return tp.replace("typing.", "")
    origin = typing.get_origin(tp)
    if origin is not None and origin is not list and origin is not dict:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_text(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return "" if not value else str(value)
    return str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _fields(cls: type, skip: set[str], prefix: str, docs: dict[str, str]) -> list[Option]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = prefix + (f.name.replace("_", "-") if prefix == "--" else f.name)
        tp = hints.get(f.name, f.type)
        if prefix == "--" and tp is bool:
            # Switches: --flag turns one on, --no-flag off.
            flag = f"{flag} / --no-{flag[2:]}"
        description = docs.get(f.name, "")
        if not description:
            # Fields described inside another field's entry point there.
            owner = next((k for k, text in docs.items() if re.search(rf"\b{f.name}\b", text)), None)
            shown = owner.replace("_", "-") if owner and prefix == "--" else owner
            description = f"see {prefix}{shown}" if owner else ""
        out.append(
            Option(
                flag,
                "" if " / " in flag else _type_text(tp),
                _default_text(_field_default(f)),
                " ".join(description.split()),
            )
        )
    return out


def _task_options() -> list[Option]:
    from memrnn.tasks.registry import get_task_class, list_tasks

    out = []
    for name in list_tasks():
        try:
            cls = get_task_class(name)
        except ValueError:
            continue
        params = [
            p
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        args = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in params
        )
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        summary = summary.split(". ")[0].rstrip(".")
        out.append(Option(f"--task {name}", "", "", f"{summary}. Arguments: {args or 'none'}."))
    return out


def train_option_groups() -> list[OptionGroup]:
    """Every option of `memrnn train`, grouped into model, task and training options."""
    from memrnn.models.config import ModelConfig
    from memrnn.train.config import TrainConfig

    train_docs = docstring_args(TrainConfig)
    model = OptionGroup(
        "model",
        "`--model NAME` picks a registered model (`memrnn list`); `--model.FIELD VALUE` changes "
        "one field of its configuration. The defaults shown are ModelConfig's; a registered "
        "model may set its own (the MRU models add a start flag, an output gate, a residual "
        "scale and a causal convolution).",
        [Option("--model", "name", "required", train_docs.get("model", ""))]
        + _fields(ModelConfig, FROM_THE_TASK, "--model.", docstring_args(ModelConfig)),
    )
    task = OptionGroup(
        "task",
        "`--task NAME` picks a registered task; `--task.ARG VALUE` sets one of its arguments "
        "(`--seq-len` sets its training length). The tasks and their arguments with defaults:",
        [Option("--task", "name", "required", train_docs.get("task", ""))] + _task_options(),
    )
    training = OptionGroup(
        "training",
        "`--KEY VALUE` (dashes or underscores), `--flag` / `--no-flag` for switches; "
        "`--config FILE.yaml` reads the same keys from a file, and the command line overrides "
        "it.",
        _fields(TrainConfig, NOT_SHOWN, "--", train_docs),
    )
    return [model, task, training]


TRAIN_SYNOPSIS = """\
usage: memrnn train --model NAME --task NAME [--out RUN] [--KEY VALUE ...]
       memrnn train --config FILE.yaml [--KEY VALUE ...]
       memrnn train --out RUN --resume [--steps N ...]

Trains a registered model on a registered task. --model and --task are required, from the
command line or a --config file, except with --resume, which continues the run in --out (it
may change only the length, the evaluation and checkpoint cadence, the device and logging).
A new run refuses a non-empty --out unless --overwrite. Bad input exits with status 2, a
non-finite loss or gradient with status 3."""


def format_train_help(width: int = 100) -> str:
    """The text of `memrnn train --help`."""
    parts = [TRAIN_SYNOPSIS]
    for group in train_option_groups():
        parts.append(f"\n{group.title} options:")
        parts.append(
            textwrap.fill(
                group.intro.replace("`", ""), width, initial_indent="  ", subsequent_indent="  "
            )
        )
        for option in group.options:
            head = option.flag
            if option.type and option.flag.startswith("--") and " " not in option.flag:
                head += f" {option.type.upper().replace(' OR ', '|')}"
            detail = option.description.replace("`", "")
            if option.default:
                detail += (
                    f" (default: {option.default})"
                    if option.default != "required"
                    else (" (required)")
                )
            parts.append(
                textwrap.fill(
                    detail or "-",
                    width,
                    initial_indent=f"  {head:30s} ",
                    subsequent_indent=" " * 33,
                )
                if len(head) <= 30
                else f"  {head}\n"
                + textwrap.fill(
                    detail or "-", width, initial_indent=" " * 33, subsequent_indent=" " * 33
                )
            )
    return "\n".join(parts)
