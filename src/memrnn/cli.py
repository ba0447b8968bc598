"""The `memrnn` command (also `python -m memrnn`).

    memrnn train --model bmru-small --task copy-first-input --seq-len 300 --steps 2000 --out runs/x
    memrnn train --config run.yaml --lr 1e-3 --model.d_model 128 --task.seed 3
    memrnn train --out runs/x --resume --steps 4000
    torchrun --nproc_per_node 4 -m memrnn train ... --batch-size 256   (data-parallel)
    memrnn eval --checkpoint runs/x --seq-len 3000 --split test
    memrnn eval --checkpoint runs/mine --report        (per-class scores, confusion matrix)
    memrnn predict --checkpoint runs/mine --input new.npz --out preds.csv
    memrnn generate --checkpoint runs/text --prompt "The " --n 100 --temperature 0.8 --top-k 20
    printf '0 1\n1 -1\n' | memrnn stream --checkpoint runs/x
    memrnn export --checkpoint runs/x --out step.pt2 --onnx step.onnx
    memrnn list
    memrnn plot --run runs/x
    memrnn plot --checkpoint runs/x --states

`train` takes any TrainConfig key as `--key value` (dashes or underscores) and needs a model
and a task (from the command line or --config), or `--out RUN --resume`. A new run refuses a
non-empty --out unless --overwrite, which removes only the files an earlier run wrote there
(its run-files.json); `--resume` refuses options that change the model, the
task or the optimisation (it may change --steps, --stop-at, --time-limit, the evaluation and
checkpoint cadence, --device, logging). A resumed run keeps its learning-rate schedule: with
a larger --steps it continues at the final rate instead of re-stretching the cosine.

Mistakes in names, types, ranges or paths, damaged or refused checkpoints, and files that
cannot be written (full disk, permissions: the message names the path and what is intact)
print one line on stderr and exit with status 2. A training run whose loss or gradients stop
being finite prints one line naming the step and exits with status 3 (its last checkpoint is
kept).

Every command that computes takes `--threads N`: the threads of torch and numba together.
Without it, the `memrnn` command runs as many as OMP_NUM_THREADS or NUMBA_NUM_THREADS say
when set, else as many as this process's cores that are idle when it starts
(memrnn.runtime.set_threads).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

from memrnn.runtime import keep_freed_memory, set_threads
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
        from memrnn.cli_help import format_train_help

        print(format_train_help())
        return 0
    config_file, overrides = parse_overrides(tokens)
    overrides = {normalise_key(k): v for k, v in overrides.items()}
    # Threads are how fast this process runs, not what the run trains: not a config key.
    threads = overrides.pop("threads", None)
    _apply_threads(None if threads is None else _threads_option(threads))
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
    if result.stopped_early is not None:
        print(
            f"stopped early at step {result.stopped_early}: {config.early_stop} evaluations "
            f"without improvement (best {result.best_metric:.4g})"
        )
    val = f"val {summary}" if summary else "no validation (last checkpoint kept)"
    print(
        f"step {result.step}: {val} (train time {result.train_time:.1f} s); "
        f"checkpoints in {result.run_dir}"
    )
    return 0


def _threads_option(text: str) -> int:
    """--threads N as an int >= 1; UsageError."""
    try:
        value = int(str(text))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--threads expects an integer >= 1, got {text!r}")
    return value


# Whether the default thread sizing applies: on the command line, yes; `main(argv)` called
# from Python leaves the threads of its process alone unless --threads is given.
_size_threads = False


def _apply_threads(n: int | None) -> None:
    """Threads of torch and numba together (memrnn.runtime.set_threads): `n`, or sized from
    OMP_NUM_THREADS / NUMBA_NUM_THREADS or the idle cores."""
    if n is not None or _size_threads:
        set_threads(n)


def _checkpoint_model(path: str) -> tuple[Any, Path]:
    """(model, checkpoint folder) of a run or checkpoint folder, verified; UsageError. A run
    trained on standardised inputs (--task.normalize standardize) gets its recorded
    normalisation in front of its encoder, so the model takes raw inputs."""
    from memrnn.tasks.arrays import with_input_standardization
    from memrnn.train.checkpoint import CheckpointError, find_checkpoint, load_model

    try:
        folder = find_checkpoint(path)
        model, _ = load_model(folder)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except CheckpointError as err:
        raise UsageError(f"{err}; use another checkpoint (e.g. {Path(path) / 'prev'})") from None
    stats = _normalization(folder)
    if stats is not None:
        try:
            with_input_standardization(model, *stats)
        except ValueError as err:
            raise UsageError(_one_line(err)) from None
    return model, folder


def _task_kwargs(folder: Path) -> dict[str, Any]:
    """What a checkpoint records about its inputs: its inputs.json (normalisation, classes),
    else the task arguments of its training state, else nothing."""
    from memrnn.tasks.arrays import INPUTS
    from memrnn.train.checkpoint import TRAINING

    path = folder / INPUTS
    if path.is_file():
        try:
            inputs = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(inputs, dict):
                raise ValueError
        except (ValueError, OSError):
            raise UsageError(
                f"checkpoint {str(folder)!r} is damaged: {INPUTS} is not a JSON mapping"
            ) from None
        return inputs
    if not (folder / TRAINING).is_file():
        return {}
    cfg = _checkpoint_training(folder).get("train_config") or {}
    kwargs = cfg.get("task_kwargs") if isinstance(cfg, dict) else None
    return kwargs if isinstance(kwargs, dict) else {}


def _normalization(folder: Path) -> tuple[list[float], list[float]] | None:
    """(mean, std) of a run trained with --task.normalize standardize, else None."""
    kwargs = _task_kwargs(folder)
    if kwargs.get("normalize") != "standardize":
        return None
    mean, std = kwargs.get("mean"), kwargs.get("std")
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != len(std):
        raise UsageError(
            f"{folder} was trained on standardised inputs but records no usable mean and std"
        )
    return mean, std


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
    if kwargs.get("normalize") == "standardize":
        # The model loaded by _checkpoint_model standardises its inputs itself.
        kwargs["normalize"] = "none"
        kwargs.pop("mean", None)
        kwargs.pop("std", None)
    try:
        vocab = load_vocab(folder)
        if vocab is not None and "vocab" in task_kwargs(cfg["task"]):
            kwargs["vocab"] = vocab
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    return build_task(cfg["task"], cfg.get("seq_len"), **kwargs)


def cmd_eval(args: argparse.Namespace) -> int:
    from memrnn.evaluation import class_report, format_report, score_split

    model, folder = _checkpoint_model(args.checkpoint)
    training = _checkpoint_training(folder)
    run_dir = folder.parent
    task = _task_of(training, folder)
    cfg = training.get("train_config") or {}
    if not task.has_split(args.split):
        raise UsageError(
            f"the task of {folder} has no {args.split} split (e.g. val_fraction 0); "
            "choose another --split"
        )
    samples = args.samples
    if samples is None and not hasattr(task, "split_size"):
        # A generated task has no end: as many samples as the run validated on.
        samples = cfg.get("eval_samples", 512)
    try:
        scores = score_split(model, task, args.split, samples, args.batch_size, args.seq_len)
    except (ValueError, TypeError) as err:
        raise UsageError(
            f"cannot evaluate {folder} on {cfg.get('task')}: {_one_line(err)}"
        ) from None
    length = args.seq_len or "default"
    scope = "all" if args.samples is None and hasattr(task, "split_size") else str(scores.count)
    metrics = {k: v for k, v in scores.metrics.items() if k != "loss"}
    result = {
        "checkpoint": str(folder),
        "split": args.split,
        "seq_len": args.seq_len,
        "step": training.get("step"),
        "sequences": scores.count,
        "whole_split": scope == "all",
        **metrics,
        "loss": scores.loss,
    }
    whole = "all" if scope == "all" else "the first"
    print(
        f"{folder} ({cfg.get('model')} on {cfg.get('task')}, step {training.get('step')}), "
        f"split {args.split}, length {length}, {whole} {scores.count} sequences: "
        f"loss={scores.loss:.4g} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    )
    stem = f"eval_{args.split}_len-{length}_n-{scope}"
    files = {f"{stem}.json": json.dumps(result, indent=2)}
    report = None
    if args.report:
        if scores.targets is None:
            raise UsageError(
                "--report needs a classification task with one class per sequence; "
                f"{cfg.get('task')} is not one"
            )
        classes = getattr(task, "classes", None) or list(range(task.output_size))
        report = class_report(scores.targets, scores.predictions, classes)
        print(format_report(report))
        files[f"{stem}_report.json"] = json.dumps({**result, "report": report}, indent=2)
    _save_eval(run_dir, files, result)
    if report is not None:
        from memrnn.evaluation import plot_confusion

        png = run_dir / f"{stem}_confusion.png"
        try:
            _claim_run_file(run_dir, png.name)
            title = f"{cfg.get('model')} on {cfg.get('task')}, {args.split}: {scores.count}"
            print(plot_confusion(report, png, title))
        except UsageError as err:
            print(f"memrnn: warning: confusion matrix not saved: {err}", file=sys.stderr)
        except OSError as err:
            print(
                f"memrnn: warning: confusion matrix not saved: {describe_os_error(err)}",
                file=sys.stderr,
            )
    return 0


EVALS_CSV = "evals.csv"
EVALS_COLUMNS = ("step", "split", "seq_len", "sequences", "whole_split", "loss", "metrics")


def _save_eval(run_dir: Path, files: dict[str, str], result: dict[str, Any]) -> None:
    """Writes each result file to the run folder and appends the result to evals.csv (one
    row per evaluation); a failure is a warning, since the result is printed."""
    import csv
    import io

    try:
        for name, text in files.items():
            _claim_run_file(run_dir, name)
            atomic_write_text(run_dir / name, text)
            print(run_dir / name)
        _claim_run_file(run_dir, EVALS_CSV)
        table = run_dir / EVALS_CSV
        old = table.read_text(encoding="utf-8") if table.is_file() else ""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not old:
            writer.writerow(EVALS_COLUMNS)
        fixed = {"checkpoint", "step", "split", "seq_len", "sequences", "whole_split", "loss"}
        metrics = " ".join(f"{k}={v:.6g}" for k, v in result.items() if k not in fixed)
        writer.writerow(
            [result["step"], result["split"], result["seq_len"] or "default"]
            + [result["sequences"], result["whole_split"], f"{result['loss']:.6g}", metrics]
        )
        atomic_write_text(table, old + buffer.getvalue())
    except UsageError as err:
        print(f"memrnn: warning: result not saved: {err}", file=sys.stderr)
    except OSError as err:
        # The result is printed above; the copy in the run folder is a convenience.
        print(f"memrnn: warning: result not saved: {describe_os_error(err)}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from memrnn.evaluation import predict
    from memrnn.tasks.arrays import label_value, read_inputs

    out_path = _output_file(args.out, "--out", (".csv",)) if args.out is not None else None
    model, folder = _checkpoint_model(args.checkpoint)
    config = model.config
    if config.input_kind != "real":
        raise UsageError(
            f"predict reads real-valued sequences; {folder} holds a token model "
            "(use `memrnn generate`)"
        )
    try:
        x, lengths, y, names = read_inputs(args.input, args.split, config.input_size)
    except ValueError as err:
        raise UsageError(_one_line(err)) from None
    kwargs = _task_kwargs(folder)
    if "classes" in kwargs:
        classify = True
    else:
        task_info = _checkpoint_training(folder).get("task") or {}
        classify = task_info.get("loss_kind") == "cross_entropy"
    dtype = next(model.parameters()).dtype
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dtype)
    n = None if lengths is None else torch.as_tensor(lengths.astype(np.int64))
    if n is not None and bool((n == x.shape[1]).all()):
        n = None
    out = predict(model, xt, n, args.batch_size)
    classes = kwargs.get("classes") or list(range(config.output_size))
    per_step = out.dim() == 3
    header = ["sequence"] + (["step"] if per_step else [])
    header += ["predicted"] + [f"p_{c}" for c in classes] if classify else []
    if not classify:
        header += [f"y{i}" for i in range(out.shape[-1])]
    rows = []
    steps = [x.shape[1] if n is None else int(n[i]) for i in range(len(names))]
    values = torch.softmax(out.double(), -1) if classify else out.double()
    for i, name in enumerate(names):
        for t in range(steps[i]) if per_step else [None]:
            v = values[i] if t is None else values[i, t]
            row = [name] + ([] if t is None else [t])
            if classify:
                row.append(classes[int(v.argmax())])
            rows.append(row + [f"{float(p):.6g}" for p in v])
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    summary = f"{folder}: predicted {len(names)} sequences of {args.input}"
    if classify and not per_step and y is not None:
        summary += _accuracy_note(y, n, classes, values.argmax(-1), label_value)
    if out_path is None:
        sys.stdout.write(buffer.getvalue())
        print(summary, file=sys.stderr)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, buffer.getvalue())
        print(f"{summary}; written to {out_path}")
    return 0


def _accuracy_note(y: Any, lengths: Any, classes: list[Any], predicted: Any, label: Any) -> str:
    """'; accuracy A on the labels y' (one label per sequence), or why there is none."""
    import numpy as np

    if y.ndim > 1:
        flat = y.reshape(y.shape[0], y.shape[1])
        last = y.shape[1] - 1 if lengths is None else lengths.numpy() - 1
        y = flat[np.arange(y.shape[0]), last]
    index = {c: i for i, c in enumerate(classes)}
    try:
        known = [index.get(label(v)) for v in y.tolist()]
    except ValueError:
        return "; its y holds labels that cannot be read"
    if any(k is None for k in known):
        return "; its y holds labels that are not among the run's classes, so no accuracy"
    hits = sum(int(k == int(p)) for k, p in zip(known, predicted.tolist(), strict=True))
    return f"; accuracy {hits / max(len(known), 1):.4f} ({hits}/{len(known)}) on its y"


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
            f"{folder} has no vocab.json, so a text prompt cannot be encoded: generate "
            "works on models trained on the text task (a token task such as mqar has no "
            "characters; use `memrnn eval` for it)"
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
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"stdin line {number}: {text[:60]!r} holds a value that is not finite")
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
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
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
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        default=None,
        help="sequence length to evaluate at (default: the task's own test length)",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="data split")
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help="score only the first N sequences of the split (default: all of it; a "
        "generated task: the run's --eval-samples)",
    )
    p.add_argument("--batch-size", type=_batch_size, default=64, help="sequences per batch")
    p.add_argument(
        "--report",
        action="store_true",
        help="also per-class precision, recall and F1 and the confusion matrix: printed, "
        "in a _report.json and as a _confusion.png in the run folder (classification)",
    )
    _add_threads(p)
    p = sub.add_parser(
        "predict", help="predict a file of new sequences (.npz or CSV) with a trained run"
    )
    p.add_argument(
        "--checkpoint", required=True, help="run folder (best, else last) or checkpoint folder"
    )
    p.add_argument(
        "--input",
        required=True,
        help=".npz with x (S, T, D) or (S, T) and optional lengths and y, or a CSV with "
        "columns sequence, x..., optional y... and split (one row per step)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="CSV file to write (default: print the CSV): one row per sequence with the "
        "predicted label and the class probabilities, or one row per step for per-step models",
    )
    p.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test"),
        help="read x_SPLIT (.npz) or the rows of that split (CSV) instead of x / all rows",
    )
    p.add_argument("--batch-size", type=_batch_size, default=64, help="sequences per batch")
    _add_threads(p)
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
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampling")
    _add_threads(p)
    p = sub.add_parser("stream", help="run a model step by step on values read from stdin")
    p.add_argument("--checkpoint", required=True, help="run or checkpoint folder")
    p.add_argument(
        "--argmax",
        action="store_true",
        help="print the index of the largest output (a class) instead of the values",
    )
    _add_threads(p)
    p = sub.add_parser("export", help="export the model's step function (torch.export, ONNX)")
    p.add_argument("--checkpoint", required=True, help="run or checkpoint folder")
    p.add_argument("--out", required=True, help="the .pt2 file to write")
    p.add_argument("--onnx", default=None, help="also write this .onnx file")
    _add_threads(p)
    sub.add_parser("list", help="registered models and tasks")
    p = sub.add_parser("plot", help="learning curves, or hidden states over time")
    p.add_argument("--run", default=None, help="run folder: learning curves from metrics.csv")
    p.add_argument("--checkpoint", default=None, help="run or checkpoint folder (with --states)")
    p.add_argument("--states", action="store_true", help="plot hidden states of one sample")
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        default=None,
        help="length of the sample (with --states; default: the task's test length)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split the sample is drawn from (with --states)",
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed that draws the sample (with --states)"
    )
    p.add_argument(
        "--out", default=None, help="PNG, PDF or SVG path (default: PNG in the run folder)"
    )
    _add_threads(p)
    _describe_defaults(parser)
    return parser


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="threads of torch and numba together (default: OMP_NUM_THREADS or "
        "NUMBA_NUM_THREADS when set, else the idle cores this process may use)",
    )


def _describe_defaults(parser: argparse.ArgumentParser) -> None:
    """Appends `(default: X)` or `(required)` to the help of every option of every command,
    so that `--help` and the generated reference show the values the parser really uses."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in sub.choices.values():
        for action in command._actions:
            text = action.help or ""
            if text is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if action.required:
                text += " (required)"
            elif action.default is not None and action.default is not False:
                # `is not`: a default of 0 is shown (0 == False).
                if "default" not in text:
                    text += f" (default: {action.default})"
            action.help = text.strip()


def main(argv: list[str] | None = None) -> int:
    global _size_threads
    _size_threads = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # memrnn.runtime: no page faults over each step's activations
    parser = build_parser()
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = parser.parse_args(argv)
        if args.command != "list":
            _apply_threads(args.threads)
        handlers = {
            "predict": cmd_predict,
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
    except BrokenPipeError:
        # The reader went away (`memrnn list | head`): not an error. Output still buffered for
        # the closed pipe goes nowhere instead of raising again when Python exits.
        _drop_stdout()
        return 0
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


def _drop_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
