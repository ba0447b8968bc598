"""The `memrnn` command (also `python -m memrnn`).

    memrnn train --model bmru-small --task copy-first-input --seq-len 300 --steps 2000 --out runs/x
    memrnn train --config run.yaml --lr 1e-3 --model.d_model 128 --task.seed 3
    memrnn train --out runs/x --resume --steps 4000
    torchrun --nproc_per_node 4 -m memrnn train ... --batch-size 256   (data-parallel)
    memrnn eval --checkpoint runs/x --seq-len 3000 --split test
    memrnn generate --checkpoint runs/text --prompt "The " --n 100 --temperature 0.8 --top-k 20
    printf '0 1\n1 -1\n' | memrnn stream --checkpoint runs/x
    memrnn export --checkpoint runs/x --out step.pt2 --onnx step.onnx
    memrnn list
    memrnn plot --run runs/x
    memrnn plot --checkpoint runs/x --states

`train` takes any TrainConfig key as `--key value` (dashes or underscores) and needs a model
and a task (from the command line or --config), or `--out RUN --resume`. A new run refuses a
non-empty --out unless --overwrite; `--resume` refuses options that change the model, the
task or the optimisation (it may change --steps, --stop-at, --time-limit, the evaluation and
checkpoint cadence, --device, logging). A resumed run keeps its learning-rate schedule: with
a larger --steps it continues at the final rate instead of re-stretching the cosine.

Mistakes in names, types, ranges or paths, damaged or refused checkpoints, and files that
cannot be written (full disk, permissions: the message names the path and what is intact)
print one line on stderr and exit with status 2. A training run whose loss or gradients stop
being finite prints one line naming the step and exits with status 3 (its last checkpoint is
kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

from memrnn.runtime import keep_freed_memory
from memrnn.train.config import TrainingDiverged, UsageError
from memrnn.train.runfolder import atomic_write_text, describe_os_error

EXIT_USAGE = 2
EXIT_DIVERGED = 3


def parse_overrides(tokens: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--key value`, `--key=value` and bare `--flag` (true) tokens -> (config file, overrides)."""
    overrides: dict[str, str] = {}
    config_file = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; options are written --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
                i += 1
            elif key.startswith("no-") or key.startswith("no_"):
                key, value = key[3:], "false"
            else:
                value = "true"
        if key == "config":
            config_file = value
        else:
            overrides[key] = value
        i += 1
    return config_file, overrides


TRAIN_USAGE = (
    "usage: memrnn train --model NAME --task NAME [--out RUN] [--KEY VALUE ...]\n"
    "       memrnn train --config FILE [--KEY VALUE ...]\n"
    "       memrnn train --out RUN --resume [--steps N ...]\n"
    "       (memrnn train --help: every option; memrnn list: models and tasks)"
)


def cmd_train(tokens: list[str]) -> int:
    from memrnn.train.config import load_yaml, normalise_key, resolve_config
    from memrnn.train.loop import train
    from memrnn.train.runfolder import load_run_config

    if any(t in ("-h", "--help") for t in tokens):
        print(__doc__)
        return 0
    config_file, overrides = parse_overrides(tokens)
    overrides = {normalise_key(k): v for k, v in overrides.items()}
    base = None
    resume = overrides.get("resume", "false").lower() in ("true", "1", "yes", "on")
    if resume:
        if not overrides.get("out", "").strip():
            raise UsageError("--resume needs --out RUN_FOLDER (the run to continue)")
        base = load_run_config(overrides["out"])
        # The saved stop_at ended the earlier invocation; a resumed run goes on to `steps`.
        base["stop_at"] = None
        base.pop("overwrite", None)
    config = resolve_config(config_file, overrides, base=base)
    given = set(overrides)
    if config_file is not None:
        given |= {normalise_key(str(k)) for k in load_yaml(config_file)}
    if not resume and not given & {"model", "task"}:
        # A bare `memrnn train` would otherwise start a default run.
        print(TRAIN_USAGE, file=sys.stderr)
        raise UsageError(
            "train needs --model NAME and --task NAME (see `memrnn list`), a --config file "
            "that names them, or --out RUN --resume"
        )
    result = train(config, echo=True)
    if result.rank != 0:
        return 0
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.val.items())
    print(
        f"step {result.step}: val {summary} (train time {result.train_time:.1f} s); "
        f"checkpoints in {result.run_dir}"
    )
    return 0


def _checkpoint_model(path: str) -> tuple[Any, Path]:
    """(model, checkpoint folder) of a run or checkpoint folder, verified; UsageError."""
    from memrnn.train.checkpoint import CheckpointError, find_checkpoint, load_model

    try:
        folder = find_checkpoint(path)
        model, _ = load_model(folder)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except CheckpointError as err:
        raise UsageError(f"{err}; use another checkpoint (e.g. {Path(path) / 'prev'})") from None
    return model, folder


def _checkpoint_training(folder: Path) -> dict[str, Any]:
    """The training state of a checkpoint folder (read only by the commands that need the
    task): tensors and plain values only, see memrnn.train.checkpoint."""
    from memrnn.train.checkpoint import CheckpointError, load_training

    try:
        return load_training(folder)
    except CheckpointError as err:
        raise UsageError(str(err)) from None


def _task_of(training: dict[str, Any], folder: Path) -> Any:
    """The task a checkpoint was trained on; a text task encodes with the saved vocab.json."""
    from memrnn.tasks.registry import task_kwargs
    from memrnn.train.checkpoint import CheckpointError, load_vocab
    from memrnn.train.loop import build_task

    cfg = training.get("train_config") or {}
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise UsageError("this checkpoint does not record its task; train it with `memrnn train`")
    kwargs = dict(cfg.get("task_kwargs") or {})
    try:
        vocab = load_vocab(folder)
        if vocab is not None and "vocab" in task_kwargs(cfg["task"]):
            kwargs["vocab"] = vocab
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    return build_task(cfg["task"], cfg.get("seq_len"), **kwargs)


def cmd_eval(args: argparse.Namespace) -> int:
    from memrnn.train.loop import evaluate

    model, folder = _checkpoint_model(args.checkpoint)
    training = _checkpoint_training(folder)
    run_dir = folder.parent
    task = _task_of(training, folder)
    cfg = training.get("train_config") or {}
    try:
        loss, metrics = evaluate(
            model,
            task,
            args.split,
            args.samples or cfg.get("eval_samples", 512),
            args.batch_size,
            seq_len=args.seq_len,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(
            f"cannot evaluate {folder} on {cfg.get('task')}: {_one_line(err)}"
        ) from None
    length = args.seq_len or "default"
    result = {
        "checkpoint": str(folder),
        "split": args.split,
        "seq_len": args.seq_len,
        "step": training.get("step"),
        **metrics,
        "loss": loss,
    }
    print(
        f"{folder} ({cfg.get('model')} on {cfg.get('task')}, step {training.get('step')}), "
        f"split {args.split}, length {length}: loss={loss:.4g} "
        + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "loss")
    )
    name = f"eval_{args.split}_{args.seq_len or 'default'}.json"
    try:
        _claim_run_file(run_dir, name)
        atomic_write_text(run_dir / name, json.dumps(result, indent=2))
    except UsageError as err:
        print(f"memrnn: warning: result not saved: {err}", file=sys.stderr)
    except OSError as err:
        # The result is printed above; the copy in the run folder is a convenience.
        print(f"memrnn: warning: result not saved: {describe_os_error(err)}", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from memrnn.inference import generate
    from memrnn.train.checkpoint import CheckpointError, load_vocab

    model, folder = _checkpoint_model(args.checkpoint)
    config = model.config
    if config.input_kind != "tokens" or config.head != "next-token":
        raise UsageError(
            f"generate needs a next-token model (e.g. trained on the text task); {folder} "
            f"holds a model with {config.input_kind} inputs and a {config.head!r} head "
            "(use `memrnn stream` for real-valued inputs)"
        )
    try:
        vocab = load_vocab(folder)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if vocab is None:
        raise UsageError(
            f"{folder} has no vocab.json, so the prompt cannot be encoded; "
            "train the model again with this version of `memrnn train`"
        )
    if not args.prompt:
        raise UsageError("--prompt must hold at least one character")
    index = {token: i for i, token in enumerate(vocab)}
    unknown = sorted({c for c in args.prompt if c not in index})
    if unknown:
        raise UsageError(
            f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}"
        )
    ids = torch.tensor([index[c] for c in args.prompt], dtype=torch.long)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        out = generate(
            model.eval(),
            ids,
            args.n,
            temperature=args.temperature,
            top_k=args.top_k,
            generator=generator,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(" ".join(str(err).split())) from None
    print("".join(vocab[i] for i in out.tolist()))
    return 0


def _stdin_steps(size: int) -> Any:
    """One list of `size` floats per non-empty, non-comment line of standard input."""
    for number, line in enumerate(sys.stdin, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.replace(",", " ").split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise UsageError(
                f"stdin line {number}: {text!r} is not {size} number(s) separated "
                "by spaces or commas"
            ) from None
        if len(values) != size:
            raise UsageError(
                f"stdin line {number}: got {len(values)} value(s); the model takes {size} per step"
            )
        yield values


def cmd_stream(args: argparse.Namespace) -> int:
    from memrnn.inference import stream

    model, folder = _checkpoint_model(args.checkpoint)
    config = model.config
    if config.input_kind != "real":
        raise UsageError(
            f"stream reads real-valued steps; {folder} holds a token model (use `memrnn generate`)"
        )
    try:
        for out_t in stream(model.eval(), _stdin_steps(config.input_size)):
            if args.argmax:
                print(int(out_t.argmax()))
            else:
                print(" ".join(f"{v:.6g}" for v in out_t.tolist()))
            sys.stdout.flush()
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from None
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error.
        sys.stdout = None
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from memrnn.export import StepModule, export_onnx, export_step, plain_text

    out = _output_file(args.out, "--out", (".pt2",))
    onnx_path = _output_file(args.onnx, "--onnx", (".onnx",)) if args.onnx else None
    model, folder = _checkpoint_model(args.checkpoint)
    model.eval()
    # The exporters' warnings are about their own internals, not about this model.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out.parent.mkdir(parents=True, exist_ok=True)
    program = export_step(model)
    torch.export.save(program, str(out))
    names = ", ".join(StepModule(model).state_names)
    print(
        f"{out}: step of {folder} as torch.export program: (x_t, {names}) -> "
        f"(y_t, new state); load with torch.export.load(path).module()"
    )
    if onnx_path is not None:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_onnx(model, onnx_path)
        except ImportError as err:
            raise UsageError(str(err)) from None
        except Exception as err:
            message = plain_text(str(err))[:300]
            raise UsageError(
                f"ONNX export of {folder} failed ({type(err).__name__}: "
                f"{message}); units with a complex state (LRU) have no ONNX "
                "form, use the .pt2 program"
            ) from None
        print(f"{onnx_path}: the same step as ONNX (inputs x_t, {names})")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    from memrnn.models.registry import describe_models

    print("models:")
    for name, text in describe_models().items():
        print(_list_line(name, text))
    print("tasks:")
    for name, text in _describe_tasks().items():
        print(_list_line(name, text))
    return 0


def _list_line(name: str, text: str) -> str:
    """`  name  description`, the whole description wrapped under itself at 100 columns."""
    return textwrap.fill(
        " ".join(text.split()),
        width=100,
        initial_indent=f"  {name:22s} ",
        subsequent_indent=" " * 25,
        break_on_hyphens=False,
    )


def _describe_tasks() -> dict[str, str]:
    try:
        from memrnn.tasks.registry import get_task_class, list_tasks
    except ImportError:
        return {}
    out = {}
    for name in list_tasks():
        # The docstring's first paragraph, whole.
        doc = (get_task_class(name).__doc__ or "").strip()
        out[name] = " ".join(doc.split("\n\n")[0].split())
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    if args.states:
        if not args.checkpoint:
            raise UsageError("--states needs --checkpoint RUN_FOLDER")
        return _plot_states(args)
    run = args.run or args.checkpoint
    if not run:
        raise UsageError(
            "plot needs --run RUN_FOLDER (learning curves) or --checkpoint RUN_FOLDER --states"
        )
    from memrnn.viz.curves import plot_curves

    if not (Path(run) / "metrics.csv").is_file():
        raise UsageError(f"{run!r} has no metrics.csv; pass a run folder written by `memrnn train`")
    out = _output_file(args.out, "--out", PLOT_SUFFIXES) if args.out else None
    if out is None:
        _claim_run_file(Path(run), "curves.png")
    try:
        print(plot_curves(run, out))
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise UsageError(
            f"{str(Path(run) / 'metrics.csv')!r} cannot be plotted ({_one_line(err)[:200]}); "
            "is it damaged?"
        ) from None
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _output_file(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """`path` as an output file: non-empty, not a folder, one of `suffixes`; UsageError."""
    if not path or not path.strip():
        raise UsageError(f"{option} is empty; give a file name ending in {suffixes[0]}")
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{option} {path!r} is a folder; give a file name ending in {suffixes[0]}")
    if out.suffix.lower() not in suffixes:
        raise UsageError(
            f"{option} {path!r} must end in {' or '.join(suffixes)} (the format is taken from it)"
        )
    return out


def _claim_run_file(run_dir: Path, name: str) -> None:
    """Records `name` in the run-file list of `run_dir` (when it is a run folder) before it is
    written there; UsageError when a file of that name is someone else's, or a link."""
    from memrnn.train.runfolder import RunFiles, describe_os_error, refuse_link

    files = RunFiles(run_dir)
    if files.exists:
        files.claim(name)
    else:
        try:
            refuse_link(run_dir / name)
        except OSError as err:
            raise UsageError(describe_os_error(err)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _plot_states(args: argparse.Namespace) -> int:
    import torch

    from memrnn.viz.states import plot_states

    out = _output_file(args.out, "--out", PLOT_SUFFIXES) if args.out else None
    model, folder = _checkpoint_model(args.checkpoint)
    training = _checkpoint_training(folder)
    task = _task_of(training, folder)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        batch = task.batch(1, args.split, generator, seq_len=args.seq_len)
    except (ValueError, TypeError) as err:
        raise UsageError(f"cannot draw a {args.split} sample: {_one_line(err)}") from None
    x = batch.x[0]
    if batch.lengths is not None:
        x = x[: int(batch.lengths[0])]
    cfg = training.get("train_config") or {}
    if out is None:
        out = folder.parent / "states.png"
        for name in (out.name, f"{out.stem}_spikes{out.suffix}"):
            _claim_run_file(folder.parent, name)
    title = f"{cfg.get('model')} on {cfg.get('task')}: states over time (one {args.split} sample)"
    for path in plot_states(model, x, out, title=title):
        print(path)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors raised as UsageError: one line, exit status 2."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _int(text: str, limit: int | None = None) -> int:
    from memrnn.train.config import MAX_COUNT

    limit = MAX_COUNT if limit is None else limit
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
    if abs(value) > limit:
        raise argparse.ArgumentTypeError(f"expected an integer up to {limit}, got {text[:40]!r}")
    return value


def _seed(text: str) -> int:
    from memrnn.train.config import MAX_SEED

    value = _int(text, MAX_SEED)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**64), got {text!r}")
    return value


def _batch_size(text: str) -> int:
    from memrnn.train.config import MAX_BATCH

    value = _int(text, MAX_BATCH)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memrnn", description="Parallelizable recurrent networks with persistent memory."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "train", help="train a model on a task (any TrainConfig key as --key value)", add_help=False
    )
    p = sub.add_parser("eval", help="evaluate a checkpoint, optionally at another length")
    p.add_argument(
        "--checkpoint", required=True, help="run folder (best, else last) or checkpoint folder"
    )
    p.add_argument("--seq-len", type=_positive_int, default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--samples", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_batch_size, default=64)
    p = sub.add_parser("generate", help="sample text from a next-token model")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (best, else last) or checkpoint folder of a text model",
    )
    p.add_argument("--prompt", required=True, help="text to start from")
    p.add_argument(
        "--n", type=_non_negative_int, default=100, help="characters to add (default 100)"
    )
    p.add_argument("--temperature", type=_temperature, default=1.0, help="0 is greedy (default 1)")
    p.add_argument(
        "--top-k", type=_positive_int, default=None, help="sample among the k most likely"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p = sub.add_parser("stream", help="run a model step by step on values read from stdin")
    p.add_argument("--checkpoint", required=True, help="run or checkpoint folder")
    p.add_argument(
        "--argmax",
        action="store_true",
        help="print the index of the largest output (a class) instead of the values",
    )
    p = sub.add_parser("export", help="export the model's step function (torch.export, ONNX)")
    p.add_argument("--checkpoint", required=True, help="run or checkpoint folder")
    p.add_argument("--out", required=True, help="the .pt2 file to write")
    p.add_argument("--onnx", default=None, help="also write this .onnx file")
    sub.add_parser("list", help="registered models and tasks")
    p = sub.add_parser("plot", help="learning curves, or hidden states over time")
    p.add_argument("--run", default=None, help="run folder: learning curves from metrics.csv")
    p.add_argument("--checkpoint", default=None, help="run or checkpoint folder (with --states)")
    p.add_argument("--states", action="store_true", help="plot hidden states of one sample")
    p.add_argument("--seq-len", type=_positive_int, default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--out", default=None, help="PNG, PDF or SVG path (default: PNG in the run folder)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # memrnn.runtime: no page faults over each step's activations
    parser = build_parser()
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = parser.parse_args(argv)
        handlers = {
            "eval": cmd_eval,
            "generate": cmd_generate,
            "stream": cmd_stream,
            "export": cmd_export,
            "list": cmd_list,
            "plot": cmd_plot,
        }
        return handlers[args.command](args)
    except UsageError as err:
        print(f"memrnn: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"memrnn: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as err:
        # A full disk, a read-only folder, a vanished file: the path and the reason.
        from memrnn.train.checkpoint import CheckpointWriteError
        from memrnn.train.runfolder import describe_os_error

        text = err.strerror if isinstance(err, CheckpointWriteError) else describe_os_error(err)
        print(f"memrnn: error: {' '.join(str(text).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("memrnn: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
