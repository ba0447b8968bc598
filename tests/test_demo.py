"""`make demo` (memrnn.demo): a fixed number of steps, no time limit unless asked for, and a
time limit that stops a model is said beside the table."""

from memrnn.demo import main

MODEL = "gru-small"


def test_demo_trains_every_model_for_the_fixed_steps(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "--models", MODEL, "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 steps per model (no time limit)" in out
    assert "| GRU | " in out and "| 4 |" in out
    assert "stopped it after" not in out


def test_demo_says_where_a_time_limit_stopped_a_model(tmp_path, capsys):
    args = ["--quick", "--out", str(tmp_path), "--models", MODEL, "--steps", "100000"]
    assert main(args + ["--time-per-model", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "stopped early after 0.5 s" in out
    assert "--time-per-model stopped it after" in out and "of 100000 steps" in out


def test_demo_refuses_a_thread_count_below_one(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["--quick", "--out", str(tmp_path), "--threads", "0"])
    assert info.value.code == 2
    assert "--threads must be an integer >= 1" in capsys.readouterr().err


def test_readme_shows_the_demo_with_its_default_steps():
    from pathlib import Path

    from memrnn.demo import CONTENDERS, _settings

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## `make demo`")[1].split("\n## ")[0]
    steps = _settings(quick=False)["steps"]
    assert f"a fixed {steps} steps" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(CONTENDERS) + 1
    assert all(row.split("|")[3].strip() == str(steps) for row in rows[1:])
