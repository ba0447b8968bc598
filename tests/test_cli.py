import json
import os
import subprocess
import sys

import pytest
import torch

from memrnn.cli import main, parse_overrides
from memrnn.models import list_models
from memrnn.train import UsageError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Intra-op threads only add contention on the tiny tensors of these tests.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODEL = "bmru-small" if "bmru-small" in list_models() else list_models()[0]
TINY = [
    "--seq-len",
    "10",
    "--batch-size",
    "4",
    "--eval-samples",
    "8",
    "--log-every",
    "1",
    "--model.d_model",
    "8",
    "--no-progress",
    "--tensorboard",
    "false",
]


def _train(out, *extra):
    return main(
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
            *TINY,
            *extra,
        ]
    )


def test_train_eval_plot_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--stop-at", "2") == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "steps: 3" in out and "stop_at: 2" in out
    assert (run / "last" / "model.safetensors").is_file()
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "step 3:" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(run), "--seq-len", "30", "--samples", "8"]) == 0
    assert "length 30" in capsys.readouterr().out
    result = json.loads((run / "eval_test_30.json").read_text())
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


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _train(blocker / "run") == 2
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
