"""`memrnn eval` over whole splits, `--report`, `memrnn predict`, runs without validation,
early stopping, input normalisation and label mapping, end to end through the command line."""

import csv
import io
import json

import numpy as np
import pytest
import torch
import yaml

from memrnn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--batch-size", "8", "--eval-samples", "8", "--log-every", "1", "--model.d_model", "8",
    "--no-progress", "--tensorboard", "false",
]  # fmt: skip


def _data(path, n_train=60, n_test=600, steps=4, labels=("b", "a", "c"), scale=1.0, shift=0.0):
    """x (S, T) one-channel sequences whose label sets their level; explicit train and test."""
    rng = np.random.default_rng(0)

    def part(n):
        k = np.arange(n) % len(labels)
        x = rng.normal(size=(n, steps)) * 0.3 + k[:, None]
        return (x * scale + shift).astype("float32"), np.asarray(labels)[k]

    x_train, y_train = part(n_train)
    x_test, y_test = part(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return x_test, y_test


def _train(tmp_path, data, *extra, steps="3"):
    run = tmp_path / "run"
    argv = ["train", "--model", "lru-small", "--task", "arrays", "--task.path", str(data)]
    assert main([*argv, "--out", str(run), "--steps", steps, *TINY, *extra]) == 0
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("eval")
    data = tmp_path / "d.npz"
    x_test, y_test = _data(data)
    run = _train(tmp_path, data, "--steps", "30", "--lr", "0.03")
    return run, data, x_test, y_test


def test_eval_scores_the_whole_split_and_keeps_each_result(trained, capsys):
    run, *_ = trained
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    # 600 sequences, more than the 512 an evaluation used to stop at.
    assert "all 600 sequences" in out
    whole = json.loads((run / "eval_test_len-default_n-all.json").read_text())
    assert whole["sequences"] == 600 and whole["whole_split"] is True
    assert main(["eval", "--checkpoint", str(run), "--samples", "10"]) == 0
    assert "the first 10 sequences" in capsys.readouterr().out
    part = json.loads((run / "eval_test_len-default_n-10.json").read_text())
    assert part["sequences"] == 10
    # The whole-split result is still there, and the table has both.
    assert json.loads((run / "eval_test_len-default_n-all.json").read_text()) == whole
    rows = list(csv.DictReader((run / "evals.csv").open()))
    assert [r["sequences"] for r in rows] == ["600", "10"]


def test_predict_matches_eval_and_prints_original_labels(trained, capsys, tmp_path):
    run, data, x_test, y_test = trained
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    accuracy = json.loads((run / "eval_test_len-default_n-all.json").read_text())["accuracy"]
    out = tmp_path / "preds.csv"
    argv = ["predict", "--checkpoint", str(run), "--input", str(data), "--split", "test"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "predicted 600 sequences" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["sequence", "predicted", "p_a", "p_b", "p_c"]
    assert {r["predicted"] for r in rows} <= {"a", "b", "c"}
    hits = sum(r["predicted"] == y for r, y in zip(rows, y_test, strict=True))
    assert hits / 600 == pytest.approx(accuracy, abs=1e-9)
    for r in rows[:5]:
        assert sum(float(r[f"p_{c}"]) for c in "abc") == pytest.approx(1.0, abs=1e-5)
    # Without --out the CSV goes to stdout and the summary, with the accuracy, to stderr.
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("sequence,predicted")
    assert f"accuracy {accuracy:.4f}" in captured.err


def test_predict_refuses_wrong_inputs_in_one_line(trained, capsys, tmp_path):
    run, *_ = trained
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 4, 2), "float32"))
    (tmp_path / "bad.txt").write_text("1")
    cases = [
        (["--input", str(tmp_path / "wide.npz")], "2 channel(s) per step"),
        (["--input", str(tmp_path / "none.npz")], "missing"),
        (["--input", str(tmp_path / "bad.txt")], ".npz or .csv"),
        (["--input", str(tmp_path / "wide.npz"), "--out", str(tmp_path / "p.txt")], ".csv"),
    ]
    for extra, match in cases:
        assert main(["predict", "--checkpoint", str(run), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err, err


def test_predict_refuses_hostile_input_files_naming_file_and_field(trained, capsys, tmp_path):
    run, *_ = trained
    x = np.zeros((3, 4), "float32")
    buffer = io.BytesIO()
    np.savez(buffer, x=x)
    whole = buffer.getvalue()
    nan_x = x.copy()
    nan_x[1, 2] = np.nan
    files = {
        "empty.npz": (b"", "not a readable .npz"),
        "truncated.npz": (whole[: len(whole) // 2], "not a readable .npz"),
        "garbage.npz": (b"PK\x03\x04 not a zip", "not a readable .npz"),
        "pickled.npz": ({"x": x.astype(object)}, "member 'x.npy'"),
        "strings.npz": ({"x": np.full((3, 4), "a")}, "x must hold numbers"),
        "nan.npz": ({"x": nan_x}, "non-finite value (nan) at index [1, 2"),
        "huge.npz": ({"x": np.full((3, 4), -1e300)}, "too large for float32 (-1e+300) at index"),
        "lengths.npz": ({"x": x, "lengths": np.array([1, 9, 2])}, "lengths must be"),
        "wide.npz": ({"x": np.zeros((3, 4, 2))}, "2 channel(s) per step"),
        "text.csv": (b"sequence,x\ns,1\ns,abc\n", "line 3, field 'x'"),
        "inf.csv": (b"sequence,x\ns,1\ns,inf\n", "not a finite number"),
        "huge.csv": (b"sequence,x\ns,1e300\n", "'1e300' is not a number float32"),
        "empty.csv": (b"", "is empty"),
    }
    for name, (content, match) in files.items():
        path = tmp_path / name
        if isinstance(content, dict):
            np.savez(path, **content)
        else:
            path.write_bytes(content)
        assert main(["predict", "--checkpoint", str(run), "--input", str(path)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err and name in err, (name, err)


def test_predict_reads_csv_without_targets(trained, capsys, tmp_path):
    run, *_ = trained
    rows = ["sequence,x"] + [f"s{i},{i}" for i in range(3) for _ in range(4)]
    (tmp_path / "new.csv").write_text("\n".join(rows) + "\n")
    assert main(["predict", "--checkpoint", str(run), "--input", str(tmp_path / "new.csv")]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["sequence"] for r in table] == ["s0", "s1", "s2"]


def test_eval_report_prints_writes_and_plots(trained, capsys):
    run, *_ = trained
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--report"]) == 0
    out = capsys.readouterr().out
    assert "confusion matrix" in out and "precision" in out
    report = json.loads((run / "eval_test_len-default_n-all_report.json").read_text())["report"]
    assert report["classes"] == ["a", "b", "c"] and report["count"] == 600
    assert sum(map(sum, report["confusion"])) == 600
    assert [row["support"] for row in report["per_class"]] == [200, 200, 200]
    assert (run / "eval_test_len-default_n-all_confusion.png").stat().st_size > 1000


def test_class_report_values():
    from memrnn.evaluation import class_report

    report = class_report(torch.tensor([0, 0, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 1]), [7, 8, 9])
    assert report["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]
    first, second, third = report["per_class"]
    assert (first["precision"], first["recall"]) == (1.0, pytest.approx(2 / 3))
    assert second["precision"] == pytest.approx(1 / 3) and second["recall"] == 1.0
    assert third == {"class": 9, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["accuracy"] == pytest.approx(3 / 5)


def test_val_fraction_zero_trains_without_validation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 5, 2)), y=np.arange(40) % 2)
    run = _train(tmp_path, tmp_path / "d.npz", "--task.val_fraction", "0", "--eval-every", "1")
    out = capsys.readouterr().out
    assert "no validation split" in out and "parameters" in out
    assert "no validation (last checkpoint kept)" in out
    assert (run / "last").is_dir() and not (run / "best").exists()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert main(["eval", "--checkpoint", str(run), "--split", "val"]) == 2
    assert "no val split" in capsys.readouterr().err


def test_too_small_split_is_one_line_at_task_build(tmp_path, capsys):
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 5, 1)), y=np.zeros(1, "int64"))
    argv = ["train", "--model", "lru-small", "--task", "arrays", "--task.path"]
    assert main([*argv, str(tmp_path / "one.npz"), "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "of 1 sequence is empty" in err
    assert not (tmp_path / "r" / "last").exists()


def test_early_stop_stops_records_and_resumes_stopped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 5, 2)), y=np.arange(40) % 2)
    # A learning rate too small to change a prediction: no evaluation after the first improves.
    extra = ["--eval-every", "1", "--early-stop", "2", "--lr", "1e-12", "--warmup", "0"]
    run = _train(tmp_path, tmp_path / "d.npz", *extra, steps="20")
    out = capsys.readouterr().out
    assert "stopped early at step 3" in out and "step 3:" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["early_stop"] == 2
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "stopped early at step 3" in capsys.readouterr().out
    # A larger patience goes on.
    assert main(["train", "--out", str(run), "--resume", "--early-stop", "4", "--no-progress"]) == 0
    assert "stopped early at step 5" in capsys.readouterr().out
    argv = ["train", "--model", "lru-small", "--task", "arrays", "--task.path"]
    bad = [*argv, str(tmp_path / "d.npz"), "--out", str(tmp_path / "r2"), "--early-stop", "2"]
    assert main(bad) == 2
    assert "--eval-every" in capsys.readouterr().err


def test_standardised_runs_take_raw_inputs_everywhere(tmp_path, capsys, monkeypatch):
    data = tmp_path / "d.npz"
    x_test, _ = _data(data, n_test=30, scale=1000.0, shift=1e5)
    run = _train(tmp_path, data, "--task.normalize", "standardize", "--steps", "20")
    saved = yaml.safe_load((run / "config.yaml").read_text())["task_kwargs"]
    assert saved["normalize"] == "standardize" and saved["mean"][0] == pytest.approx(
        1.01e5, rel=1e-3
    )
    from memrnn.cli import _checkpoint_model
    from memrnn.tasks.arrays import standardize
    from memrnn.train.checkpoint import load_model

    model, folder = _checkpoint_model(str(run))
    plain, _ = load_model(folder)
    raw = torch.from_numpy(x_test[:, :, None])
    scaled = standardize(raw, saved["mean"], saved["std"])
    assert torch.allclose(model(raw)[0], plain(scaled)[0], atol=1e-5)
    # eval and predict agree on the raw test split.
    assert main(["eval", "--checkpoint", str(run)]) == 0
    accuracy = json.loads((run / "eval_test_len-default_n-all.json").read_text())["accuracy"]
    argv = ["predict", "--checkpoint", str(run), "--input", str(data), "--split", "test"]
    capsys.readouterr()
    assert main(argv) == 0
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().err
    # stream applies it too: the last step's output equals the model's on the sequence.
    steps = "\n".join(str(float(v)) for v in x_test[0]) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(steps))
    capsys.readouterr()
    assert main(["stream", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    last = [float(v) for v in out.strip().splitlines()[-1].split()]
    assert last == pytest.approx(model(raw[:1])[0][0].tolist(), abs=1e-4)


def test_threads_option(trained, capsys):
    run, *_ = trained
    before = torch.get_num_threads()
    try:
        assert main(["eval", "--checkpoint", str(run), "--samples", "8", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["eval", "--checkpoint", str(run), "--threads", "0"]) == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_checkpoints_carry_their_inputs_for_commands_without_the_training_state(
    tmp_path, capsys, monkeypatch
):
    data = tmp_path / "d.npz"
    x_test, _ = _data(data, n_test=6, scale=50.0, shift=300.0)
    run = _train(tmp_path, data, "--task.normalize", "standardize")
    inputs = json.loads((run / "last" / "inputs.json").read_text())
    assert inputs["classes"] == ["a", "b", "c"] and len(inputs["mean"]) == 1
    # A copy of the model files alone (no training state, no run folder) still predicts alike.
    import shutil

    copy = tmp_path / "deployed"
    shutil.copytree(run / "last", copy)
    (copy / "training.pt").unlink()
    (copy / "manifest.json").unlink()
    np.savez(tmp_path / "new.npz", x=x_test)
    outputs = []
    capsys.readouterr()
    for checkpoint in (run / "last", copy):
        assert (
            main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "new.npz")])
            == 0
        )
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 7


def test_predict_writes_one_row_per_valid_step_for_per_step_models(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5, 2)).astype("float32")
    lengths = rng.integers(2, 6, 30)
    np.savez(tmp_path / "r.npz", x=x, y=np.cumsum(x, axis=1), lengths=lengths)
    run = _train(tmp_path, tmp_path / "r.npz")
    np.savez(tmp_path / "new.npz", x=x[:4], lengths=lengths[:4])
    capsys.readouterr()
    argv = ["predict", "--checkpoint", str(run), "--input", str(tmp_path / "new.npz")]
    assert main(argv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["sequence", "step", "y0", "y1"]
    assert len(rows) == int(lengths[:4].sum())
