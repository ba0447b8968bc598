import json

import numpy as np
import pytest
import torch
import yaml

from memrnn.cli import main
from memrnn.tasks import create_task
from memrnn.tasks.arrays import ArraysTask, file_sha256

TINY = [
    "--steps",
    "3",
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


pytestmark = pytest.mark.usefixtures("one_thread")


def _classification_npz(path, n=40, steps=6, width=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, steps, width)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("int64") + 2 * (x[:, 1, 0] > 0)
    np.savez(path, x=x, y=y)
    return x, y


def _regression_npz(path, n=20, steps=5):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, steps, 2)).astype("float32")
    y = np.cumsum(x, axis=1)  # (S, T, 2) per-step targets
    np.savez(
        path,
        x_train=x[:14],
        y_train=y[:14],
        x_val=x[14:17],
        y_val=y[14:17],
        x_test=x[17:],
        y_test=y[17:],
    )
    return x, y


CSV = """sequence,split,x0,x1,y
a,train,0.5,1.0,1
a,train,0.1,0.0,1
a,train,-0.3,0.2,1
b,train,0.9,0.4,0
b,train,0.2,0.1,0
c,val,0.3,0.3,2
d,test,1.0,0.0,1
d,test,0.0,1.0,1
d,test,0.5,0.5,1
d,test,0.5,0.5,1
"""


def test_npz_classification_splits_are_carved_with_the_seed(tmp_path):
    x, y = _classification_npz(tmp_path / "d.npz")
    task = create_task("arrays", path=str(tmp_path / "d.npz"))
    assert task.kind == "classification" and task.target == "last"
    assert (task.input_size, task.output_size, task.seq_len) == (3, 4, 6)
    sizes = [task.split_size(s) for s in ("train", "val", "test")]
    assert sizes == [32, 4, 4]
    again = ArraysTask(str(tmp_path / "d.npz"))
    other = ArraysTask(str(tmp_path / "d.npz"), seed=1)
    test = next(task.iter_split("test", 64))
    assert torch.equal(test.x, next(again.iter_split("test", 64)).x)
    assert not torch.equal(test.x, next(other.iter_split("test", 64)).x)
    # Every test sequence is one of the file's, with its own label.
    for xi, yi in zip(test.x, test.y, strict=True):
        row = int(np.flatnonzero((x == xi.numpy()).all(axis=(1, 2)))[0])
        assert yi == y[row]
    assert task.recorded_kwargs() == {
        "path": str((tmp_path / "d.npz").resolve()),
        "sha256": file_sha256(tmp_path / "d.npz"),
        "stratify": True,
        "classes": [0, 1, 2, 3],
    }


def test_npz_regression_with_given_splits(tmp_path):
    x, y = _regression_npz(tmp_path / "r.npz")
    task = ArraysTask(str(tmp_path / "r.npz"))
    assert task.kind == "regression" and task.target == "sequence" and task.loss_kind == "mse"
    assert task.output_size == 2
    val = next(task.iter_split("val", 8))
    assert torch.allclose(val.x, torch.from_numpy(x[14:17]))
    assert torch.allclose(val.y, torch.from_numpy(y[14:17]).float())


def test_csv_layout_variable_lengths_and_splits(tmp_path):
    (tmp_path / "d.csv").write_text(CSV)
    task = ArraysTask(str(tmp_path / "d.csv"))
    assert task.kind == "classification" and task.seq_len == 4 and task.input_size == 2
    train = next(task.iter_split("train", 8))
    assert train.lengths.tolist() == [3, 2]
    assert train.y.tolist() == [1, 0]
    assert torch.equal(train.x[0, 2], torch.tensor([-0.3, 0.2]))
    assert torch.equal(train.x[1, 2], torch.zeros(2))  # padding
    assert task.split_size("val") == 1 and task.split_size("test") == 1
    regression = ArraysTask(str(tmp_path / "d.csv"), kind="regression")
    batch = next(regression.iter_split("train", 8))
    assert batch.y.shape == (2, 3, 1) and regression.target == "sequence"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("x0,y\n1,0\n", "no 'sequence' column"),
        ("sequence,x0\na,1\n", "columns named x"),
        ("sequence,x0,y\na,1,0\nb,1,0\na,2,0\n", "not consecutive"),
        ("sequence,x0,y\na,1\n", "line 2 has 2 fields"),
        ("sequence,x0,y\na,zz,0\n", "not a number"),
        ("sequence,split,x0,y\na,dev,1,0\n", "split must be one of"),
    ],
)
def test_csv_errors(tmp_path, content, match):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        ArraysTask(str(tmp_path / "bad.csv"))


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        ArraysTask(str(tmp_path / "none.npz"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.npz or \.csv"):
        ArraysTask(str(tmp_path / "d.txt"))
    np.savez(tmp_path / "k.npz", inputs=np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match="neither x and y"):
        ArraysTask(str(tmp_path / "k.npz"))
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2, 1, 1)), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"x must have shape \(S, T, D\)"):
        ArraysTask(str(tmp_path / "s.npz"))
    _classification_npz(tmp_path / "d.npz")
    with pytest.raises(ValueError, match="has changed"):
        ArraysTask(str(tmp_path / "d.npz"), sha256="0" * 64)
    with pytest.raises(ValueError, match="kind"):
        ArraysTask(str(tmp_path / "d.npz"), kind="ranking")
    np.savez(tmp_path / "one.npz", x=np.zeros((4, 2, 1)), y=np.zeros(4, "int64"))
    with pytest.raises(ValueError, match="too few"):
        ArraysTask(str(tmp_path / "one.npz"), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="regression targets need one value per step"):
        ArraysTask(str(tmp_path / "d.npz"), kind="regression")


def test_cli_train_eval_resume_and_changed_file(tmp_path, capsys):
    data, run = tmp_path / "d.npz", tmp_path / "run"
    _classification_npz(data)
    args = ["train", "--model", "lru-small", "--task", "arrays", "--task.path", str(data)]
    assert main([*args, "--out", str(run), *TINY]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["task_kwargs"]
    assert saved == {
        "path": str(data.resolve()),
        "sha256": file_sha256(data),
        "stratify": True,
        "classes": [0, 1, 2, 3],
    }
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--split", "test"]) == 0
    result = json.loads((run / "eval_test_len-default_n-all.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert main(["plot", "--checkpoint", str(run), "--states"]) == 0
    capsys.readouterr()
    # The data changes under the run: every command that rebuilds the task refuses, in one line.
    _classification_npz(data, n=41)
    for argv in (
        ["eval", "--checkpoint", str(run)],
        ["train", "--out", str(run), "--resume", "--steps", "5", "--no-progress"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(data.resolve()) in err and "has changed" in err
    data.unlink()
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_cli_per_step_regression_from_csv(tmp_path, capsys, monkeypatch):
    from memrnn.models.network import Network

    seen = []
    forward = Network.forward

    def spy(self, x, state=None, lengths=None):
        seen.append(lengths)
        return forward(self, x, state, lengths)

    # The training loop and evaluation pass the padded batches' lengths to the model.
    monkeypatch.setattr(Network, "forward", spy)
    rows = ["sequence,x,y"]
    rng = np.random.default_rng(0)
    for s in range(12):
        total = 0.0
        for _ in range(3 + s % 4):
            v = float(rng.normal())
            total += v
            rows.append(f"s{s},{v:.4f},{total:.4f}")
    data = tmp_path / "d.csv"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = ["train", "--model", "mingru-small", "--task", "arrays", "--task.path", str(data)]
    assert main([*argv, "--task.val_fraction", "0.2", "--out", str(run), *TINY]) == 0
    assert seen and all(n is not None and n.dim() == 1 for n in seen)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--split", "val"]) == 0
    assert "mse=" in capsys.readouterr().out


def _labelled_npz(path, labels, n=60, steps=5, width=2, scale=1.0, shift=0.0):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(n, steps, width)) * scale + shift).astype("float32")
    y = np.asarray(labels)[np.arange(n) % len(labels)]
    np.savez(path, x=x, y=y)
    return x, y


def test_string_labels_are_classes_in_sorted_order(tmp_path):
    _, y = _labelled_npz(tmp_path / "s.npz", ["walk", "run", "sit"])
    task = ArraysTask(str(tmp_path / "s.npz"))
    assert task.kind == "classification" and task.classes == ["run", "sit", "walk"]
    assert task.output_size == 3
    train = task._splits["train"]
    assert set(train.y.tolist()) == {0, 1, 2}


def test_one_based_and_huge_labels_make_no_unused_class(tmp_path):
    _labelled_npz(tmp_path / "one.npz", [1, 2, 3])
    task = ArraysTask(str(tmp_path / "one.npz"))
    assert task.classes == [1, 2, 3] and task.output_size == 3
    _labelled_npz(tmp_path / "big.npz", [10**9, 7, 3 * 10**9])
    task = ArraysTask(str(tmp_path / "big.npz"))
    assert task.classes == [7, 10**9, 3 * 10**9] and task.output_size == 3
    # Labels stored as floats that are whole numbers are the same classes.
    _labelled_npz(tmp_path / "f.npz", [1.0, 2.0])
    assert ArraysTask(str(tmp_path / "f.npz")).classes == [1, 2]


def test_univariate_s_t_arrays_are_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u.npz", x=rng.normal(size=(30, 9)), y=np.arange(30) % 3)
    task = ArraysTask(str(tmp_path / "u.npz"))
    assert (task.input_size, task.seq_len) == (1, 9)
    assert task.batch(2).x.shape == (2, 9, 1)


def test_carved_splits_are_stratified(tmp_path):
    # 90% of one class: an unstratified 10% validation split is often all of that class.
    y = np.array([0] * 90 + [1] * 10)
    np.savez(tmp_path / "i.npz", x=np.zeros((100, 3, 1), "float32"), y=y)
    for seed in range(5):
        task = ArraysTask(str(tmp_path / "i.npz"), seed=seed)
        for split, n in (("val", 10), ("test", 10), ("train", 80)):
            counts = np.bincount(task._splits[split].y.numpy(), minlength=2)
            assert counts.tolist() == [n * 9 // 10, n // 10], (seed, split)


def test_val_fraction_zero_leaves_no_val_split(tmp_path):
    _labelled_npz(tmp_path / "d.npz", [0, 1])
    task = ArraysTask(str(tmp_path / "d.npz"), val_fraction=0)
    assert not task.has_split("val") and task.has_split("test")
    assert task.split_size("train") + task.split_size("test") == 60


@pytest.mark.parametrize(
    ("n", "labels", "kwargs", "match"),
    [
        (1, [0], {}, r"the test split of 10% of 1 sequence is empty"),
        (4, [0, 1], {"test_fraction": 0}, r"the validation split of 10% of 4 sequences is empty"),
        (40, list(range(8)), {}, r"test split .* holds 4, fewer than the 8 classes"),
        (9, [0, 0, 1, 2, 3, 4, 5, 6, 7], {"test_fraction": 0, "val_fraction": 0.89}, "keep one"),
    ],
)
def test_splits_too_small_for_their_classes_are_refused(tmp_path, n, labels, kwargs, match):
    rng = np.random.default_rng(0)
    y = np.asarray(labels)[np.arange(n) % len(labels)]
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(n, 4, 1)), y=y)
    with pytest.raises(ValueError, match=match):
        ArraysTask(str(tmp_path / "d.npz"), **kwargs)


def test_standardize_uses_training_statistics_and_keeps_padding_zero(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6, 2)) * [3.0, 0.01] + [100.0, -5.0]
    lengths = rng.integers(2, 7, 50)
    x[np.arange(6)[None, :] >= lengths[:, None]] = 0.0
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 2, lengths=lengths)
    task = ArraysTask(str(tmp_path / "d.npz"), normalize="standardize")
    train = task._splits["train"]
    valid = torch.arange(6)[None, :] < train.lengths[:, None]
    values = train.x[valid]
    assert torch.allclose(values.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(values.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert float(train.x[~valid].abs().max()) == 0.0
    recorded = task.recorded_kwargs()
    assert recorded["mean"][0] == pytest.approx(100.0, abs=1.5)
    # A rebuild with the recorded statistics gives the same inputs.
    again = ArraysTask(**{**recorded, "normalize": "standardize"})
    assert torch.equal(again._splits["test"].x, task._splits["test"].x)
    with pytest.raises(ValueError, match="normalize"):
        ArraysTask(str(tmp_path / "d.npz"), normalize="minmax")


def test_balanced_class_weights_weigh_the_rare_class_up(tmp_path):
    y = np.array([0] * 90 + [1] * 10)
    np.savez(tmp_path / "i.npz", x=np.zeros((100, 3, 1), "float32"), y=y)
    task = ArraysTask(str(tmp_path / "i.npz"), class_weights="balanced")
    assert task.weights.tolist() == pytest.approx([80 / (2 * 72), 80 / (2 * 8)])
    batch = task._take("train", slice(None))
    logits = torch.randn(len(batch.y), 2)
    expected = torch.nn.functional.cross_entropy(logits, batch.y, weight=task.weights)
    assert torch.allclose(task.loss(logits, batch), expected)
    with pytest.raises(ValueError, match="class_weights"):
        ArraysTask(str(tmp_path / "i.npz"), class_weights="inverse")
    _regression_npz(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="weighs classes"):
        ArraysTask(str(tmp_path / "r.npz"), class_weights="balanced")


def test_csv_string_labels(tmp_path):
    rows = ["sequence,x,y"]
    for s in range(30):
        label = ("low", "high")[s % 2]
        rows += [f"s{s},{s % 2 + 0.1 * t},{label}" for t in range(3)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    task = ArraysTask(str(tmp_path / "d.csv"))
    assert task.classes == ["high", "low"]


def test_runs_recorded_without_classes_are_rebuilt_as_before(tmp_path):
    # A run that recorded only the file's path and checksum used the labels as class indices
    # and an unstratified carving; its task is rebuilt that way.
    _labelled_npz(tmp_path / "d.npz", [1, 2])
    digest = file_sha256(tmp_path / "d.npz")
    task = ArraysTask(str(tmp_path / "d.npz"), sha256=digest)
    assert task.classes == [0, 1, 2] and not task.stratify
