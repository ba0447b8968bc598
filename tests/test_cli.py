import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from memrnn.cli import main, parse_overrides
from memrnn.models import list_models
from memrnn.train import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


MODEL = "bmru-small" if "bmru-small" in list_models() else list_models()[0]


@pytest.fixture(scope="module")
def train(tiny_flags):
    """Trains a 3-step flip-flop run into `out` with extra flags; returns the exit status."""
    return lambda out, *extra: main(
        [
            "train",
            "--model",
            MODEL,
            "--task",
            "flip-flop",
            "--steps",
            "3",
            "--out",
            str(out),
            *tiny_flags,
            *extra,
        ]
    )


def test_train_eval_plot_and_resume(tmp_path, capsys, train):
    run = tmp_path / "run"
    assert train(run, "--stop-at", "2") == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "steps: 3" in out and "stop_at: 2" in out
    assert (run / "last" / "model.safetensors").is_file()
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "step 3:" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(run), "--seq-len", "30", "--samples", "8"]) == 0
    assert "length 30" in capsys.readouterr().out
    result = json.loads((run / "eval_test_len-30_n-8.json").read_text())
    assert result["seq_len"] == 30 and 0.0 <= result["accuracy"] <= 1.0

    assert main(["plot", "--run", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000
    assert main(["plot", "--checkpoint", str(run), "--states", "--seq-len", "40"]) == 0
    assert (run / "states.png").stat().st_size > 1000


def test_list_shows_models_and_tasks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert MODEL in out and "flip-flop" in out and "tasks:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--stesp", "3"], "unknown config key 'stesp'; did you mean steps"),
        (["train", "--steps", "three"], "config key 'steps' expects int, got 'three'"),
        (["train", "--model", "bmru-smal", "--steps", "1"], "unknown model 'bmru-smal'"),
        (["train", "--task", "flip-flip", "--steps", "1"], "unknown task 'flip-flip'"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["train", "--resume", "--out", "no-such-run"], "has no config.yaml"),
        (["eval", "--checkpoint", "no-such-run"], "no checkpoint in 'no-such-run'"),
        (["train", "--task", "psmnist", "--task.data_dir", "nope"], "data not found in "),
        (["train", "--task", "text"], "set with --task.NAME VALUE"),
        (["plot", "--run", "no-such-run"], "has no metrics.csv"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("memrnn: error:")


def test_unwritable_output_folder(tmp_path, capsys, train):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train(blocker / "run") == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_no_traceback_from_the_command_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "memrnn", "train", "--lr", "fast"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "memrnn: error: config key 'lr' expects float, got 'fast'"


def test_parse_overrides():
    assert parse_overrides(["--a", "1", "--b=2", "--flag", "--no-bar", "--config", "x.yaml"]) == (
        "x.yaml",
        {"a": "1", "b": "2", "flag": "true", "bar": "false"},
    )
    with pytest.raises(UsageError, match="unexpected argument 'oops'"):
        parse_overrides(["oops"])


def test_demo_quick(tmp_path, capsys):
    from memrnn.demo import main as demo_main

    assert demo_main(["--quick", "--out", str(tmp_path), "--models", MODEL]) == 0
    out = capsys.readouterr().out
    assert "| model | parameters |" in out
    for name in ("results.md", "results.csv", "results.png"):
        assert (tmp_path / name).stat().st_size > 0


def _text_run(tmp_path, tiny_flags):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the dog ran to the log. " * 40)
    run = tmp_path / "text"
    args = [
        "train",
        "--model",
        "gru-small",
        "--task",
        "text",
        "--task.path",
        str(corpus),
        "--steps",
        "3",
        "--out",
        str(run),
        *tiny_flags,
    ]
    assert main(args) == 0
    return run


def test_generate_continues_a_prompt_from_the_saved_vocabulary(tmp_path, capsys, tiny_flags):
    run = _text_run(tmp_path, tiny_flags)
    vocab = json.loads((run / "last" / "vocab.json").read_text())["tokens"]
    assert vocab == sorted(set("the cat sat on the mat; the dog ran to the log. "))
    capsys.readouterr()
    args = ["generate", "--checkpoint", str(run), "--prompt", "the ", "--n", "20", "--seed", "3"]
    assert main([*args, "--temperature", "0.8", "--top-k", "5"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("the ") and len(text) == 24 and set(text) <= set(vocab)
    assert main([*args, "--temperature", "0.8", "--top-k", "5"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == text, "the same seed gives the same text"

    assert main(["generate", "--checkpoint", str(run), "--prompt", "XYZ"]) == 2
    assert "outside the model's vocabulary: 'XYZ'" in capsys.readouterr().err
    assert main([*args, "--temperature", "-1"]) == 2
    assert "`temperature` must be >= 0" in capsys.readouterr().err


def test_generate_and_stream_refuse_the_wrong_kind_of_model(tmp_path, capsys, train, tiny_flags):
    run = tmp_path / "run"
    assert train(run) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "a"]) == 2
    assert "generate needs a next-token model" in capsys.readouterr().err
    text = _text_run(tmp_path, tiny_flags)
    capsys.readouterr()
    assert main(["stream", "--checkpoint", str(text)]) == 2
    assert "holds a token model" in capsys.readouterr().err


def test_generate_on_a_token_task_model_says_it_needs_a_text_model(tmp_path, capsys, tiny_flags):
    run = tmp_path / "mqar"
    flags = [*tiny_flags, "--seq-len", "16", "--task.num_kv_pairs", "2"]
    argv = ["train", "--model", "transformer-small", "--task", "mqar", "--steps", "2"]
    assert main([*argv, "--out", str(run), *flags]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert "works on models trained on the text task" in err
    assert len(err.strip().splitlines()) == 1


def test_stream_prints_one_output_per_stdin_line(tmp_path, train):
    from memrnn.inference import prefill
    from memrnn.train import load_model

    run = tmp_path / "run"
    assert train(run) == 0
    lines = "1 1\n0, 0\n\n# a comment\n0 0\n1 -1\n0 0\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "memrnn", "stream", "--checkpoint", str(run)],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = torch.tensor([[float(v) for v in row.split()] for row in proc.stdout.splitlines()])
    # flip-flop has a per-step head: the streamed outputs are the parallel forward's.
    model, _ = load_model(run)
    x = torch.tensor([[1.0, 1], [0, 0], [0, 0], [1, -1], [0, 0]]).unsqueeze(0)
    expected, _ = prefill(model.eval(), x)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, expected[0], rtol=1e-4, atol=1e-5)

    proc = subprocess.run(
        [sys.executable, "-m", "memrnn", "stream", "--checkpoint", str(run), "--argmax"],
        input="1 1\n1 2 3\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout.strip() in ("0", "1")
    assert proc.stderr.strip() == (
        "memrnn: error: stdin line 2: got 3 value(s); the model takes 2 per step"
    )


def test_export_writes_a_program_that_steps_like_the_model(tmp_path, capsys, train):
    from memrnn.export import StepModule
    from memrnn.train import load_model

    run = tmp_path / "run"
    assert train(run) == 0
    onnx = importlib.util.find_spec("onnx") is not None
    extra = ["--onnx", str(tmp_path / "step.onnx")] if onnx else []
    assert (
        main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "step.pt2"), *extra]) == 0
    )
    assert "step.pt2" in capsys.readouterr().out
    program = torch.export.load(str(tmp_path / "step.pt2"))
    model, _ = load_model(run)
    step = StepModule(model.eval())
    x = torch.randn(3, 2)
    state = step.initial_tensors(3)
    for got, expected in zip(program.module()(x, *state), step(x, *state), strict=True):
        torch.testing.assert_close(got, expected)
    if onnx:
        from memrnn.export import run_onnx

        got = run_onnx(tmp_path / "step.onnx", x, *state)
        torch.testing.assert_close(got[0], step(x, *state)[0], rtol=1e-4, atol=1e-5)


def test_eval_of_a_damaged_checkpoint_exits_2_with_one_line(tmp_path, capsys, train):
    run = tmp_path / "run"
    assert train(run) == 0
    (run / "best" / "training.pt").write_bytes(b"")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training.pt has 0 bytes" in err


def test_eval_of_a_text_model_encodes_with_the_saved_vocabulary(tmp_path, capsys, tiny_flags):
    run = _text_run(tmp_path, tiny_flags)
    corpus = tmp_path / "corpus.txt"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--samples", "8"]) == 0
    from memrnn.cli import _checkpoint_training, _task_of
    from memrnn.tasks.registry import create_task
    from memrnn.train.checkpoint import find_checkpoint, load_vocab

    folder = find_checkpoint(run)
    task = _task_of(_checkpoint_training(folder), folder)
    assert task.vocab == load_vocab(folder) and "a" in task.vocab
    # The run recorded the corpus's SHA-256: a changed corpus is not scored in its place.
    original = corpus.read_text()
    corpus.write_text(original.replace("a", "o"))
    assert main(["eval", "--checkpoint", str(run), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has changed since the run recorded it" in err
    # Built with the saved vocabulary, ids keep their meaning; a character the model never
    # saw cannot be encoded.
    changed = create_task("text", path=str(corpus), seq_len=10, vocab=task.vocab)
    assert changed.vocab == task.vocab
    corpus.write_text(original + "Z")
    with pytest.raises(ValueError, match=r"characters outside `vocab` \('Z'\)"):
        create_task("text", path=str(corpus), seq_len=10, vocab=task.vocab)


def test_progress_is_a_bar_only_on_a_terminal(tmp_path, capsys, tiny_flags):
    args = ["train", "--model", MODEL, "--task", "flip-flop", "--steps", "40", "--out"]
    tiny = [t for t in tiny_flags if t != "--no-progress"]
    assert main([*args, str(tmp_path / "run"), *tiny, "--log-every", "10"]) == 0
    err = capsys.readouterr().err
    # Not a terminal (captured): plain lines every 40/20 = 2 steps, no carriage returns.
    lines = [line for line in err.splitlines() if f"{MODEL} on flip-flop: step" in line]
    assert len(lines) == 20 and "\r" not in err
    assert lines[-1].startswith(f"{MODEL} on flip-flop: step 40/40 loss=")
    assert "accuracy=" in lines[-1]


def test_list_shows_whole_descriptions(capsys):
    from memrnn.cli import _describe_tasks

    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, text in _describe_tasks().items():
        assert f"{name} {text}" in out
    # The first paragraph of a task's docstring, not its first line.
    assert _describe_tasks()["adding"].endswith(".")


def test_a_bare_train_prints_usage_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    assert main(["train", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: memrnn train --model NAME --task NAME")
    assert err.strip().splitlines()[-1].startswith("memrnn: error: train needs --model NAME")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, train):
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert train(run) == 0
    return run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["eval", "--checkpoint", "{run}", "--seq-len", "0"],
            "--seq-len: expected an integer >= 1",
        ),
        (["eval", "--checkpoint", "{run}", "--batch-size", "0"], "--batch-size: expected an"),
        (["eval", "--checkpoint", "{run}", "--samples", "0"], "--samples: expected an integer"),
        (["eval", "--checkpoint", "{run}", "--split", "x"], "invalid choice: 'x'"),
        (["plot", "--run", "{run}", "--out", "x.txt"], "--out 'x.txt' must end in .png"),
        (["plot", "--run", "{run}", "--out", "{run}"], "is a folder"),
        (["export", "--checkpoint", "{run}", "--out", "{run}"], "is a folder; give a file"),
        (["export", "--checkpoint", "{run}", "--out", "a.onnx"], "must end in .pt2"),
        (["train", "--model", MODEL, "--task", "flip-flop", "--lr", "nan"], "'lr' must be a"),
        (["train", "--model", MODEL, "--task", "flip-flop", "--betas", "[2,3]"], "in [0, 1)"),
        (["train", "--model", MODEL, "--min-lr-ratio", "-1", "--warmup", "0"], "[0, 1], got -1"),
        (["train", "--model", MODEL, "--weight-decay", "-5"], "'weight_decay' must be a finite"),
        (["train", "--model", MODEL, "--grad-clip", "-1"], "'grad_clip' must be a finite"),
        (["train", "--model", MODEL, "--model.d_model", "[1,"], "is not a value"),
        (["train", "--model", MODEL, "--config", "{bad}"], "is not UTF-8 text"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tiny_run, tmp_path, capsys):
    run = tiny_run
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"steps: \xff\xfe")
    argv = [a.replace("{run}", str(run)).replace("{bad}", str(bad)) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memrnn: error:") and message in err


def test_an_unwritable_plot_names_the_path(tmp_path, capsys, monkeypatch, train):
    import errno

    from memrnn.train import runfolder

    run = tmp_path / "run"
    assert train(run) == 0

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    # A read-only folder (faked: the tests may run as root, which ignores permissions). The
    # figure is rendered in memory and written through a new temporary file.
    monkeypatch.setattr(runfolder, "create_new", read_only)
    capsys.readouterr()
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "ro" / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{tmp_path / 'ro' / 'c.png'}': Permission denied" in err


def test_eval_at_a_length_a_fixed_length_task_cannot_take(tmp_path, capsys, tiny_flags):
    run = tmp_path / "digits"
    args = ["train", "--model", MODEL, "--task", "digits", "--steps", "1", "--out", str(run)]
    at = tiny_flags.index("--seq-len")  # digits has one length: drop the flag and its value
    assert main([*args, *tiny_flags[:at], *tiny_flags[at + 2 :]]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--seq-len", "128"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its length is fixed by the data" in err
