"""A run owns exactly what it wrote: `--overwrite` removes only the files its run-file list
names, nothing is written through a link, a stale lock has one taker however many race for
it, `--resume` checks what the checkpoint recorded, and tampered checkpoints are one-line
errors (exit 2) before any weight is loaded."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from memrnn.cli import main
from memrnn.train import checkpoint
from memrnn.train.checkpoint import (
    CheckpointError,
    find_good_checkpoint,
    load_model,
    save_checkpoint,
    verify_checkpoint,
)
from memrnn.train.config import UsageError
from memrnn.train.runfolder import LOCK, RUN_FILES_LIST, RunLock, atomic_write_text

SMALL = ["--seq-len", "6", "--batch-size", "2", "--eval-samples", "4", "--model.d_model", "4"]
QUIET = ["--no-progress", "--tensorboard", "false"]
TRAIN = ["train", "--model", "gru-small", "--task", "flip-flop", *SMALL, *QUIET]

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out: Path, *extra: str) -> int:
    return main([*TRAIN, "--out", str(out), "--steps", "2", *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memrnn: error: "), err
    return lines[0]


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _remanifest(folder: Path) -> None:
    """Rewrites a checkpoint's manifest to match its (tampered) files."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name != "manifest.json":
            data = path.read_bytes()
            files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safety") / "run"
    assert _train(run) == 0
    return run


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest


# -- a run owns exactly what it wrote -----------------------------------------------------------
def test_overwrite_never_removes_files_that_only_share_a_run_files_name(
    tmp_path, capsys, tree_hashes
):
    out = tmp_path / "mine"
    (out / "best").mkdir(parents=True)
    (out / "best" / "model_v1.pt").write_bytes(b"my model")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.x").write_bytes(b"my events")
    (out / "eval_summary.json").write_text("{}")
    (out / ".notes.tmp-1").write_text("mine")
    (out / "config.yaml").write_text("mine: true\n")
    before = tree_hashes(out)
    capsys.readouterr()
    assert _train(out, "--overwrite") == 2
    err = _error(capsys)
    assert "was not written by this run" in err and "move it away" in err
    assert tree_hashes(out) == before


def test_overwrite_keeps_other_files_and_says_so(tmp_path, capsys, tree_hashes):
    out = tmp_path / "run"
    assert _train(out) == 0
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.x").write_bytes(b"my events")
    (out / "eval_summary.json").write_text("{}")
    (out / ".notes.tmp-1").write_text("mine")
    (out / "last" / "my-notes.txt").write_text("mine")
    mine = {
        k: v
        for k, v in tree_hashes(out).items()
        if "mine" in k or k.startswith(("tens", "eval_s", ".notes"))
    }
    first = json.loads((out / "last" / "manifest.json").read_text())
    capsys.readouterr()
    # `last` holds a file of the user's besides the run's: kept, and the run refuses to
    # write over that folder.
    assert _train(out, "--overwrite") == 2
    assert "last' was not written by this run" in _error(capsys)
    assert (out / "last" / "my-notes.txt").read_text() == "mine"
    (out / "last" / "my-notes.txt").unlink()
    assert _train(out, "--overwrite", "--steps", "3") == 0
    err = capsys.readouterr().err
    assert "kept 3 file(s)" in err and "eval_summary.json" in err
    after = tree_hashes(out)
    assert {k: after.get(k) for k in mine if "my-notes" not in k} == {
        k: v for k, v in mine.items() if "my-notes" not in k
    }
    assert json.loads((out / "last" / "manifest.json").read_text()) != first
    listed = json.loads((out / RUN_FILES_LIST).read_text())["files"]
    assert "eval_summary.json" not in listed and "tensorboard" not in listed


def test_a_run_killed_before_its_first_checkpoint_restarts_without_overwrite(
    tmp_path, capsys, monkeypatch
):
    from memrnn.train import loop

    out = tmp_path / "run"

    def killed(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_loop", killed)
    assert _train(out) == 130
    monkeypatch.undo()
    # As after kill -9: the lock of a process that is gone stays behind.
    (out / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.yaml", "metrics.csv", RUN_FILES_LIST, LOCK]
    )
    capsys.readouterr()
    assert _train(out) == 0
    assert (out / "last" / "model.safetensors").is_file()
    # A folder that also holds someone else's file is not taken without --overwrite.
    other = tmp_path / "other"
    monkeypatch.setattr(loop, "_loop", killed)
    assert _train(other) == 130
    monkeypatch.undo()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert _train(other) == 2
    assert "is not empty" in _error(capsys)


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        assert _train(out) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["config.yaml"] == modes["metrics.csv"] == modes["model.safetensors"] == 0o640
    assert modes["last"] == modes["run"] == 0o750


# -- no write through a link ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["metrics.csv", "config.yaml", "prev", "metrics.csv.tmp"])
def test_resume_writes_nothing_through_a_link(trained, tmp_path, capsys, tree_hashes, name):
    run = _copy(trained, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious"
    if name == "prev":
        import shutil

        shutil.rmtree(run / "prev", ignore_errors=True)
        target.mkdir()
        (target / "keep.txt").write_text("precious")
    elif name == "config.yaml":
        target.write_text((run / name).read_text())
        (run / name).unlink()
    else:
        (run / name).unlink(missing_ok=True)
        target.write_text("precious")
    (run / name).symlink_to(target)
    before = tree_hashes(outside)
    capsys.readouterr()
    code = main(["train", "--out", str(run), "--resume", "--steps", "4"])
    assert tree_hashes(outside) == before
    if name == "metrics.csv.tmp":
        # No longer a name the run writes: the link is left alone and the run goes on.
        assert code == 0 and (run / name).is_symlink()
        return
    assert code == 2
    assert "symbolic link" in _error(capsys)
    assert not (run / ".last.old").exists()


def test_plots_and_eval_results_are_not_written_through_links(
    trained, tmp_path, capsys, tree_hashes
):
    run = _copy(trained, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("curves.png", "states.png"):
        (outside / name).write_text("precious")
        (run / name).symlink_to(outside / name)
    before = tree_hashes(outside)
    capsys.readouterr()
    assert main(["plot", "--run", str(run)]) == 2
    assert "curves.png' was not written by this run" in _error(capsys)
    assert main(["plot", "--checkpoint", str(run), "--states"]) == 2
    assert "states.png' was not written by this run" in _error(capsys)
    assert tree_hashes(outside) == before
    eval_files = [p.name for p in run.glob("eval_*.json")]
    assert main(["eval", "--checkpoint", str(run)]) == 0
    written = [p for p in run.glob("eval_*.json") if p.name not in eval_files]
    assert written
    for path in written:
        path.unlink()
        (outside / path.name).write_text("precious")
        path.symlink_to(outside / path.name)
    before = tree_hashes(outside)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert "result not saved" in capsys.readouterr().err
    assert tree_hashes(outside) == before
    # A plot in a folder that is no run's: a link there is refused all the same.
    plain = tmp_path / "plain"
    plain.mkdir()
    import shutil

    shutil.copy(run / "metrics.csv", plain / "metrics.csv")
    (plain / "curves.png").symlink_to(outside / "curves.png")
    assert main(["plot", "--run", str(plain)]) == 2
    assert "symbolic link" in _error(capsys)
    assert tree_hashes(outside) == before


def test_the_write_probe_and_atomic_writes_never_open_an_existing_file(tmp_path):
    from memrnn.train.loop import prepare_run_dir

    outside = tmp_path / "precious"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    # The name earlier versions probed with.
    (run / f".write-test-{os.getpid()}").symlink_to(outside)
    prepare_run_dir(run)
    (run / "a.txt").symlink_to(outside)
    with pytest.raises(OSError, match="symbolic link"):
        atomic_write_text(run / "a.txt", "new")
    assert outside.read_text() == "precious"


def test_a_manifest_naming_files_outside_its_folder_is_refused(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path / "run")
    (tmp_path / "secret").write_text("secret")
    digest = hashlib.sha256(b"secret").hexdigest()
    for name in ("../../secret", str(tmp_path / "secret"), "..", ""):
        manifest = json.loads((run / "last" / "manifest.json").read_text())
        manifest["files"][name] = {"bytes": 6, "sha256": digest}
        (run / "last" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match="not a file of its own folder"):
            verify_checkpoint(run / "last")
        manifest["files"].pop(name)
        (run / "last" / "manifest.json").write_text(json.dumps(manifest))
    (run / "last" / "manifest.json").write_text("[1, 2]")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last")]) == 2
    assert "manifest.json" in _error(capsys)


# -- locks -----------------------------------------------------------------------------------------
def _racer(folder: str, trials: int, start, done, results, index: int) -> None:
    for trial in range(trials):
        start.wait()
        lock = RunLock(Path(folder) / str(trial))
        try:
            lock.acquire()
            results[trial * 64 + index] = 1
        except UsageError:
            results[trial * 64 + index] = 0
        done.wait()
        lock.release()


def _race(tmp_path: Path, trials: int, racers: int) -> list[int]:
    """Holders per trial when `racers` processes take over one stale lock at once."""
    context = multiprocessing.get_context("fork")
    dead = _dead_pid()
    for trial in range(trials):
        (tmp_path / str(trial)).mkdir()
        stale = {"pid": dead, "host": socket.gethostname()}
        (tmp_path / str(trial) / LOCK).write_text(json.dumps(stale))
    start, done = context.Barrier(racers), context.Barrier(racers)
    results = context.Array("b", trials * 64, lock=False)
    workers = [
        context.Process(target=_racer, args=(str(tmp_path), trials, start, done, results, i))
        for i in range(racers)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
        assert w.exitcode == 0
    return [sum(results[t * 64 : t * 64 + racers]) for t in range(trials)]


def test_a_stale_lock_has_exactly_one_taker_under_a_race(tmp_path):
    holders = _race(tmp_path, trials=150, racers=8)
    assert holders == [1] * 150


@pytest.mark.slow
def test_a_stale_lock_has_one_taker_in_1000_racing_take_overs(tmp_path):
    holders = _race(tmp_path, trials=1000, racers=8)
    assert holders == [1] * 1000


# -- resume checks what it will use ------------------------------------------------------------
def test_resume_after_editing_config_yaml_is_refused(trained, tmp_path, capsys, tree_hashes):
    run = _copy(trained, tmp_path / "run")
    text = (run / "config.yaml").read_text()
    for edit in (("lr: 0.003", "lr: 0.03"), ("task: flip-flop", "task: copy-first-input")):
        assert edit[0] in text
        (run / "config.yaml").write_text(text.replace(*edit))
        before = tree_hashes(run)
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 2
        err = _error(capsys)
        assert "--resume would change what the run" in err and edit[0].split(":")[0] in err
        assert tree_hashes(run) == before
    (run / "config.yaml").write_text(text)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0


def test_a_text_run_records_its_corpus_and_refuses_another(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the dog ran to the log. " * 8)
    run = tmp_path / "text"
    args = ["train", "--model", "gru-small", "--task", "text", "--task.path", str(corpus)]
    assert main([*args, "--steps", "2", "--out", str(run), *SMALL, *QUIET]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["task_kwargs"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    corpus.write_text(corpus.read_text().replace("cat", "cot"))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
    assert "has changed since the run recorded it" in _error(capsys)
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "has changed since the run recorded it" in _error(capsys)


# -- checkpoints -----------------------------------------------------------------------------------
def _tamper_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    tensors, metadata = change(tensors, metadata)
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)


def _first(tensors):
    return sorted(tensors)[0]


TAMPERINGS = {
    "wrong shape": lambda t, m: (
        {**t, _first(t): torch.zeros(*t[_first(t)].shape, 2)},
        m,
    ),
    "missing key": lambda t, m: ({k: v for k, v in t.items() if k != _first(t)}, m),
    "extra key": lambda t, m: ({**t, "extra.weight": torch.zeros(3)}, m),
    "integer weights": lambda t, m: ({**t, _first(t): t[_first(t)].to(torch.int32)}, m),
    "bad metadata": lambda t, m: (t, {"complex": "{not json"}),
    "metadata not a list": lambda t, m: (t, {"complex": '{"a": 1}'}),
}


@pytest.mark.parametrize("kind", sorted(TAMPERINGS))
def test_tampered_weights_are_one_line_errors(trained, tmp_path, capsys, kind):
    run = _copy(trained, tmp_path / "run")
    for tag in ("best", "last", "prev"):
        if (run / tag).is_dir():
            _tamper_weights(run / tag, TAMPERINGS[kind])
            _remanifest(run / tag)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "checkpoint" in _error(capsys)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 2
    _error(capsys)


CONFIG_EDITS = {
    "n_layers 100000": lambda c: {**c, "n_layers": 100000},
    "d_model 100000": lambda c: {**c, "d_model": 100000},
    "n_layers 500": lambda c: {**c, "n_layers": 500},
    "bad unit": lambda c: {**c, "unit": "no-such-unit"},
    "list": lambda c: [c],
    "unknown field": lambda c: {**c, "surprise": 1},
    "string size": lambda c: {**c, "d_model": "4"},
    # Written as text below: JSON nested deeper than any parser's recursion limit.
    "deeply nested": None,
}


@pytest.mark.parametrize("kind", sorted(CONFIG_EDITS))
def test_a_damaged_model_config_is_a_one_line_error(trained, tmp_path, capsys, kind):
    run = _copy(trained, tmp_path / "run")
    for tag in ("best", "last", "prev"):
        if (run / tag).is_dir():
            path = run / tag / "model_config.json"
            config = json.loads(path.read_text())
            edit = CONFIG_EDITS[kind]
            if edit is None:
                path.write_text('{"unit_kwargs": ' + "[" * 100000 + "]" * 100000 + "}")
            else:
                path.write_text(json.dumps(edit(config)))
            _remanifest(run / tag)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "model_config.json" in _error(capsys)


def test_readers_retry_a_checkpoint_caught_mid_rename(tmp_path):
    torch.manual_seed(0)
    model, folder = load_model(_train_quick(tmp_path))
    config = model.config
    stop = threading.Event()
    errors: list[str] = []

    def reader():
        while not stop.is_set():
            try:
                find_good_checkpoint(tmp_path / "ck", "last")
                load_model(tmp_path / "ck", "last")
            except (CheckpointError, FileNotFoundError) as err:
                errors.append(str(err))

    save_checkpoint(tmp_path / "ck", "last", model, config, {"step": 0})
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(60):
            save_checkpoint(tmp_path / "ck", "last", model, config, {"step": step})
    finally:
        stop.set()
        thread.join()
    assert errors == []


def _train_quick(tmp_path: Path) -> Path:
    run = tmp_path / "quick"
    assert _train(run) == 0
    return run / "last"


def test_checkpoint_retry_gives_up_at_once_on_a_damaged_folder(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path / "run")
    (run / "last" / "model.safetensors").write_bytes(b"x")
    sleeps = []
    monkeypatch.setattr(checkpoint.time, "sleep", sleeps.append)
    with pytest.raises(CheckpointError):
        load_model(run, "last")
    assert sleeps == []


def _write_idx(path: Path, array) -> None:
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.tobytes())


@pytest.mark.parametrize("name", ["smnist", "spiking-mnist"])
def test_mnist_tasks_record_the_hash_of_their_files(tmp_path, name):
    import numpy as np

    from memrnn.tasks.images import MNIST_FILES
    from memrnn.tasks.registry import create_task, list_tasks

    if name not in list_tasks():
        pytest.skip(f"{name} is not registered")
    rng = np.random.default_rng(0)
    for images, labels in MNIST_FILES.values():
        _write_idx(tmp_path / images, rng.integers(0, 255, (20, 28, 28)))
        _write_idx(tmp_path / labels, np.arange(20) % 10)
    task = create_task(name, data_dir=str(tmp_path))
    recorded = task.recorded_kwargs()
    assert recorded["data_dir"] == str(tmp_path.resolve()) and len(recorded["sha256"]) == 64
    assert create_task(name, **recorded).recorded_kwargs() == recorded
    _write_idx(tmp_path / MNIST_FILES["test"][1], (np.arange(20) + 1) % 10)
    with pytest.raises(ValueError, match="has changed since the run recorded it"):
        create_task(name, **recorded)


def test_onnx_errors_are_plain_text(monkeypatch):
    pytest.importorskip("onnx")
    from memrnn import export
    from memrnn.models.registry import create_model

    coloured_text = "\x1b[1m\x1b[31mError\x1b[0m:\n  bad \x1b]8;;u\x1b\\link\x1b]8;;\x1b\\"
    assert export.plain_text(coloured_text) == "Error: bad link"

    def coloured(*args, **kwargs):
        raise RuntimeError("\x1b[31mTorchExportError\x1b[0m: unsupported op")

    monkeypatch.setattr(export.torch.onnx, "export", coloured)
    with pytest.raises(RuntimeError, match="ONNX export failed") as info:
        export.export_onnx(create_model("gru-small", 2, 2, d_model=4), "/nonexistent/x.onnx")
    assert "\x1b" not in str(info.value) and "TorchExportError: unsupported op" in str(info.value)
