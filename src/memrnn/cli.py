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

`train` takes any TrainConfig key as `--key value` (dashes or underscores); mistakes in names,
types or paths, and damaged checkpoints, print one line on stderr and exit with status 2. A
training run whose loss or gradients stop being finite prints one line naming the step and
exits with status 3 (its last checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from memrnn.runtime import keep_freed_memory
from memrnn.train.config import TrainingDiverged, UsageError

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


def cmd_train(tokens: list[str]) -> int:
    from memrnn.train.config import normalise_key, resolve_config
    from memrnn.train.loop import load_run_config, train

    if any(t in ("-h", "--help") for t in tokens):
        print(__doc__)
        return 0
    config_file, overrides = parse_overrides(tokens)
    overrides = {normalise_key(k): v for k, v in overrides.items()}
    base = None
    resume = overrides.get("resume", "false").lower() in ("true", "1", "yes", "on")
    if resume:
        if "out" not in overrides:
            raise UsageError("--resume needs --out RUN_FOLDER (the run to continue)")
        base = load_run_config(overrides["out"])
        # The saved stop_at ended the earlier invocation; a resumed run goes on to `steps`.
        base["stop_at"] = None
    config = resolve_config(config_file, overrides, base=base)
    result = train(config, echo=True)
    if result.rank != 0:
        return 0
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.val.items())
    print(
        f"step {result.step}: val {summary} (train time {result.train_time:.1f} s); "
        f"checkpoints in {result.run_dir}"
    )
    return 0


def _checkpoint_context(path: str) -> tuple[Any, Any, dict[str, Any], Path]:
    from memrnn.train.checkpoint import CheckpointError, find_checkpoint, load_model, load_training

    try:
        folder = find_checkpoint(path)
        model, _ = load_model(folder)
        training = load_training(folder)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except CheckpointError as err:
        raise UsageError(f"{err}; use another checkpoint (e.g. {Path(path) / 'prev'})") from None
    return model, folder, training, folder.parent


def _task_of(training: dict[str, Any]) -> Any:
    from memrnn.train.loop import build_task

    cfg = training.get("train_config") or {}
    if "task" not in cfg:
        raise UsageError("this checkpoint does not record its task; train it with `memrnn train`")
    return build_task(cfg["task"], cfg.get("seq_len"), **(cfg.get("task_kwargs") or {}))


def cmd_eval(args: argparse.Namespace) -> int:
    from memrnn.train.loop import evaluate

    model, folder, training, run_dir = _checkpoint_context(args.checkpoint)
    task = _task_of(training)
    cfg = training.get("train_config") or {}
    loss, metrics = evaluate(
        model,
        task,
        args.split,
        args.samples or cfg.get("eval_samples", 512),
        args.batch_size,
        seq_len=args.seq_len,
    )
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
        (run_dir / name).write_text(json.dumps(result, indent=2))
    except OSError:
        pass
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from memrnn.inference import generate
    from memrnn.train.checkpoint import load_vocab

    model, folder, _, _ = _checkpoint_context(args.checkpoint)
    config = model.config
    if config.input_kind != "tokens" or config.head != "next-token":
        raise UsageError(
            f"generate needs a next-token model (e.g. trained on the text task); {folder} "
            f"holds a model with {config.input_kind} inputs and a {config.head!r} head "
            "(use `memrnn stream` for real-valued inputs)"
        )
    vocab = load_vocab(folder)
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

    model, folder, _, _ = _checkpoint_context(args.checkpoint)
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

    from memrnn.export import StepModule, export_onnx, export_step

    model, folder, _, _ = _checkpoint_context(args.checkpoint)
    model.eval()
    # The exporters' warnings are about their own internals, not about this model.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program = export_step(model)
    torch.export.save(program, str(out))
    names = ", ".join(StepModule(model).state_names)
    print(
        f"{out}: step of {folder} as torch.export program: (x_t, {names}) -> "
        f"(y_t, new state); load with torch.export.load(path).module()"
    )
    if args.onnx:
        onnx_path = Path(args.onnx)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_onnx(model, onnx_path)
        except ImportError as err:
            raise UsageError(str(err)) from None
        except Exception as err:
            message = " ".join(str(err).split())[:300]
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
        print(f"  {name:22s} {text}")
    print("tasks:")
    for name, text in _describe_tasks().items():
        print(f"  {name:22s} {text}")
    return 0


def _describe_tasks() -> dict[str, str]:
    try:
        from memrnn.tasks.registry import get_task_class, list_tasks
    except ImportError:
        return {}
    out = {}
    for name in list_tasks():
        doc = (get_task_class(name).__doc__ or "").strip().splitlines()
        out[name] = doc[0] if doc else ""
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
    print(plot_curves(run, args.out))
    return 0


def _plot_states(args: argparse.Namespace) -> int:
    import torch

    from memrnn.viz.states import plot_states

    model, folder, training, run_dir = _checkpoint_context(args.checkpoint)
    task = _task_of(training)
    generator = torch.Generator().manual_seed(args.seed)
    batch = task.batch(1, args.split, generator, seq_len=args.seq_len)
    x = batch.x[0]
    if batch.lengths is not None:
        x = x[: int(batch.lengths[0])]
    cfg = training.get("train_config") or {}
    out = args.out or run_dir / "states.png"
    title = f"{cfg.get('model')} on {cfg.get('task')}: states over time (one {args.split} sample)"
    for path in plot_states(model, x, out, title=title):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p = sub.add_parser("generate", help="sample text from a next-token model")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (best, else last) or checkpoint folder of a text model",
    )
    p.add_argument("--prompt", required=True, help="text to start from")
    p.add_argument("--n", type=int, default=100, help="characters to add (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path (default: inside the run folder)")
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
    except KeyboardInterrupt:
        print("memrnn: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
