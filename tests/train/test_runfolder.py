"""Guarded run folders: resume refuses changes of what is trained, no silent overwrite, a lock
against two writers, atomic text files, and the learning-rate schedule across a resume."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

import memrnn.train.checkpoint as checkpoint
import memrnn.train.runfolder as runfolder
from memrnn.cli import main
from memrnn.train import UsageError, read_metrics
from memrnn.train.checkpoint import load_training
from memrnn.train.runfolder import LOCK, RunLock, atomic_write_text, load_run_config

MODEL = "gru-small"
TINY = [
    "--seq-len",
    "10",
    "--batch-size",
    "4",
    "--eval-samples",
    "8",
    "--log-every",
    "1",
    "--warmup",
    "1",
    "--model.d_model",
    "8",
    "--no-progress",
    "--tensorboard",
    "false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, *extra: str) -> int:
    args = ["train", "--model", MODEL, "--task", "flip-flop", "--out", str(out)]
    return main([*args, *TINY, *extra])


def _snapshot(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memrnn: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert _train(run, "--steps", "2") == 0
    return run


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--task", "copy-first-input"], "task: 'flip-flop' -> 'copy-first-input'"),
        (["--model", "lru-small"], "model: 'gru-small' -> 'lru-small'"),
        (["--model.d_model", "32"], "model_overrides: {'d_model': 8} -> {'d_model': 32}"),
        (["--seq-len", "20"], "seq_len: 10 -> 20"),
        (["--lr", "0.1"], "lr: 0.003 -> 0.1"),
        (["--schedule-steps", "50"], "schedule_steps: 2 -> 50"),
    ],
)
def test_resume_refuses_a_change_of_what_is_trained(run_folder, option, named, capsys):
    before = _snapshot(run_folder)
    capsys.readouterr()
    assert main(["train", "--out", str(run_folder), "--resume", *option]) == 2
    err = _one_error_line(capsys)
    assert "--resume would change what the run in" in err and named in err
    assert _snapshot(run_folder) == before


def test_resume_may_change_the_length_and_the_cadence(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--eval-every", "1"]) == 0
    assert load_training(run / "last")["step"] == 3
    assert load_run_config(run)["steps"] == 3


def test_resume_with_more_steps_continues_at_the_final_rate(tmp_path):
    """The cosine runs over the steps the run started with; more steps hold its last rate."""
    run = tmp_path / "run"
    assert _train(run, "--steps", "4", "--lr", "0.01", "--min-lr-ratio", "0.1") == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "8"]) == 0
    lrs = {int(r["step"]): float(r["lr"]) for r in read_metrics(run) if r["split"] == "train"}
    assert lrs[1] == pytest.approx(0.01)
    # The scheduler's rate for step s is factor(s - 1): the cosine reaches 0.1 x lr at step 5.
    assert [lrs[s] for s in range(5, 9)] == pytest.approx([0.001] * 4)
    assert load_run_config(run)["schedule_steps"] == 4


def test_a_new_run_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 0
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(run, "--steps", "3") == 2
    err = _one_error_line(capsys)
    assert "is not empty" in err and "--overwrite" in err
    assert _snapshot(run) == before

    assert _train(run, "--steps", "3", "--overwrite") == 0
    assert load_training(run / "last")["step"] == 3
    assert [int(r["step"]) for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3]
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "prev").exists()
    # The overwritten run resumes like any other.
    assert load_run_config(run)["overwrite"] is False
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0


def test_resume_and_overwrite_together_and_empty_out_are_refused(run_folder, capsys):
    before = _snapshot(run_folder)
    capsys.readouterr()
    assert main(["train", "--out", str(run_folder), "--resume", "--overwrite"]) == 2
    assert "give one" in _one_error_line(capsys)
    assert _snapshot(run_folder) == before
    assert main(["train", "--model", MODEL, "--task", "flip-flop", "--out", ""]) == 2
    assert "'out' is empty" in _one_error_line(capsys)
    assert main(["train", "--out", " ", "--resume"]) == 2
    assert "--resume needs --out" in _one_error_line(capsys)


def test_a_live_lock_refuses_a_second_writer(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(f'{{"pid": {holder.pid}, "host": "{socket.gethostname()}"}}')
        before = _snapshot(run)
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
        err = _one_error_line(capsys)
        assert f"is being written by process {holder.pid}" in err
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and taken over.
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 0
    assert not (run / LOCK).exists()


def test_lock_is_exclusive_and_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(UsageError, match=f"being written by process {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    assert not (tmp_path / LOCK).exists()


def test_a_damaged_config_yaml_or_metrics_csv_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 0
    good = (run / "config.yaml").read_bytes()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
    assert "config.yaml' is damaged" in _one_error_line(capsys)
    (run / "config.yaml").write_text("[not, a, mapping]")
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
    assert "not a mapping" in _one_error_line(capsys)
    (run / "config.yaml").write_bytes(good)

    (run / "metrics.csv").write_text("step,split,loss\nnot-a-step,train,1\n")
    before = _snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
    assert "metrics.csv' is damaged" in _one_error_line(capsys)
    assert _snapshot(run) == before
    assert main(["plot", "--run", str(run)]) == 2
    assert "cannot be plotted" in _one_error_line(capsys)


def test_a_full_disk_at_the_start_leaves_no_empty_config(tmp_path, capsys, monkeypatch):
    real_fsync = os.fsync

    def no_space_for_the_config(fd):
        if ".config.yaml." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(runfolder.os, "fsync", no_space_for_the_config)
    run = tmp_path / "run"
    assert _train(run, "--steps", "2") == 2
    err = _one_error_line(capsys)
    assert "config.yaml': No space left on device; it was not created" in err
    assert not (run / "config.yaml").exists()
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv", "run-files.json"]


def test_atomic_write_keeps_the_previous_content(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runfolder.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device; its previous content is kept"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_full_disk_while_checkpointing_names_the_path_and_what_survived(
    tmp_path, capsys, monkeypatch
):
    real_write = checkpoint._write_bytes
    calls = {"n": 0}

    def full_after_the_first_checkpoint(path, data):
        if path.name == "model.safetensors":
            calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", full_after_the_first_checkpoint)
    run = tmp_path / "run"
    # Step 1 writes last and best; step 2's `last` hits the full disk.
    assert _train(run, "--steps", "3", "--eval-every", "1") == 2
    err = _one_error_line(capsys)
    assert "step 2: writing checkpoint 'last' failed at" in err
    assert "model.safetensors' (No space left on device)" in err
    assert f"the previous checkpoint '{run / 'last'}' is intact" in err
    assert "continue with --resume" in err
    monkeypatch.undo()
    assert load_training(run / "last")["step"] == 1
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert load_training(run / "last")["step"] == 3
