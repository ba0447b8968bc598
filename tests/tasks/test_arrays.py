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
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2)), y=np.zeros(3))
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
    assert saved == {"path": str(data.resolve()), "sha256": file_sha256(data)}
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--split", "test"]) == 0
    result = json.loads((run / "eval_test_default.json").read_text())
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
