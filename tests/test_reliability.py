"""Scale and reliability of training runs, end to end through the `memrnn` command:
data-parallel runs under torchrun, SIGKILL and resume, damaged checkpoints, non-finite losses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memrnn.cli import main
from memrnn.train import (
    CheckpointError,
    UsageError,
    find_good_checkpoint,
    load_model,
    read_metrics,
    resolve_config,
    train,
)
from memrnn.train.checkpoint import load_training

# The torch GRU needs no kernel compilation, so a fresh process trains within a second.
MODEL = "gru-small"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TINY = [
    "--seq-len",
    "12",
    "--eval-samples",
    "16",
    "--warmup",
    "2",
    "--model.d_model",
    "8",
    "--no-progress",
    "--tensorboard",
    "false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memrnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "memrnn", *args]


def _weights(run: Path, tag: str = "last") -> dict[str, torch.Tensor]:
    model, _ = load_model(run, tag)
    return model.state_dict()


def _assert_same_weights(a: Path, b: Path, rtol: float = 0.0, atol: float = 0.0) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=rtol, atol=atol, msg=key)


def _train_rows(run: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["loss"])) for r in read_metrics(run) if r["split"] == "train"]


# -- data parallel -----------------------------------------------------------------------------
def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    """2 gloo processes x 4 samples == 1 process x 8 samples in 2 micro-batches of 4."""
    args = [
        "train",
        "--model",
        MODEL,
        "--task",
        "flip-flop",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--log-every",
        "1",
        "--eval-every",
        "3",
        "--dtype",
        "float64",
        *TINY,
    ]
    two = tmp_path / "two"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "-m",
            "memrnn",
            *args,
            "--out",
            str(two),
        ],
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The 1-process run goes in this process while the two workers start up.
    one = tmp_path / "one"
    assert main([*args, "--out", str(one), "--grad-accum", "2"]) == 0
    output, _ = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, output[-3000:]
    assert output.count("step 6: val") == 1, "only rank 0 reports"
    # float64: the runs differ only in the order of the reductions. The CSV keeps 6 digits.
    rows_one, rows_two = _train_rows(one), _train_rows(two)
    assert [s for s, _ in rows_one] == [s for s, _ in rows_two] == list(range(1, 7))
    for (_, a), (_, b) in zip(rows_one, rows_two, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    _assert_same_weights(one, two, rtol=1e-9, atol=1e-12)
    assert load_training(two / "last")["world_size"] == 2
    assert len(load_training(two / "last")["rng_ranks"]) == 2

    # Resume under torchrun: the 2-process run continues to step 8 like the 1-process one.
    more = ["--steps", "8"]
    launcher = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "-m",
            "memrnn",
            "train",
            "--out",
            str(two),
            "--resume",
            *more,
        ],
        env=ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert launcher.returncode == 0, launcher.stdout[-2000:] + launcher.stderr[-2000:]
    assert main(["train", "--out", str(one), "--resume", *more]) == 0
    _assert_same_weights(one, two, rtol=1e-9, atol=1e-12)


def test_batch_that_does_not_split_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="batch_size 6 does not split into grad_accum 4"):
        resolve_config(overrides={"batch_size": "6", "grad_accum": "4"})
    with pytest.raises(UsageError, match="'grad_accum' must be >= 1"):
        resolve_config(overrides={"grad_accum": "0"})


def test_bf16_on_cpu_is_refused(tmp_path: Path) -> None:
    config = resolve_config(
        overrides={"model": MODEL, "precision": "bf16", "device": "cpu", "out": str(tmp_path)}
    )
    with pytest.raises(UsageError, match="bf16 needs a CUDA device"):
        train(config)
    with pytest.raises(UsageError, match="'precision' must be one of fp32, bf16, tf32"):
        resolve_config(overrides={"precision": "fp16"})
    with pytest.raises(UsageError, match="'dtype' must be one of float32, float64"):
        resolve_config(overrides={"dtype": "half"})


def test_tf32_on_cpu_is_refused(tmp_path: Path) -> None:
    config = resolve_config(
        overrides={"model": MODEL, "precision": "tf32", "device": "cpu", "out": str(tmp_path)}
    )
    with pytest.raises(UsageError, match="--precision tf32 needs a CUDA device"):
        train(config)


@pytest.mark.gpu
def test_bf16_on_cuda_keeps_recurrences_in_float32(tmp_path: Path) -> None:
    from memrnn.units.base import RecurrentUnit

    config = resolve_config(
        overrides={
            "model": "bmru-small",
            "task": "flip-flop",
            "seq_len": "64",
            "steps": "20",
            "batch_size": "16",
            "precision": "bf16",
            "device": "cuda",
            "out": str(tmp_path),
            "progress": "false",
            "tensorboard": "false",
            "eval_samples": "32",
        }
    )
    result = train(config)
    losses = [loss for _, loss in _train_rows(tmp_path)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    unit = next(m for m in result.model.modules() if isinstance(m, RecurrentUnit))
    x = torch.randn(2, 5, unit.input_size, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, state = unit(x)
    assert y.dtype == torch.float32


# -- SIGKILL and resume ------------------------------------------------------------------------
def _checkpoint_step(run: Path) -> int:
    try:
        folder, _ = find_good_checkpoint(run, "last")
        return int(load_training(folder)["step"])
    except (FileNotFoundError, CheckpointError):
        return 0


def test_sigkill_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    steps = 150
    args = [
        "train",
        "--model",
        MODEL,
        "--task",
        "flip-flop",
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--log-every",
        "5",
        "--ckpt-every",
        "1",
        "--eval-every",
        "50",
        *TINY,
        "--seq-len",
        "40",
        "--model.dropout",
        "0.1",
    ]
    full = subprocess.Popen(
        _memrnn(*args, "--out", str(tmp_path / "full")),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cut = tmp_path / "cut"
    victim = subprocess.Popen(
        _memrnn(*args, "--out", str(cut)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _checkpoint_step(cut) < 10 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = _checkpoint_step(cut)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 10 <= killed_at < steps
    resumed = subprocess.run(
        _memrnn("train", "--out", str(cut), "--resume"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step {steps}:" in resumed.stdout
    _, err = full.communicate(timeout=240)
    assert full.returncode == 0, err[-2000:]
    _assert_same_weights(tmp_path / "full", cut)
    assert _train_rows(tmp_path / "full") == _train_rows(cut)


# -- damaged checkpoints -----------------------------------------------------------------------
def _run(out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--model",
            MODEL,
            "--task",
            "flip-flop",
            "--batch-size",
            "4",
            "--log-every",
            "1",
            "--out",
            str(out),
            *TINY,
            *extra,
        ]
    )


def test_damaged_last_checkpoint_is_detected_and_resume_falls_back_to_prev(tmp_path, capsys):
    assert _run(tmp_path / "full", "--steps", "6", "--eval-every", "2") == 0
    run = tmp_path / "cut"
    assert _run(run, "--steps", "6", "--eval-every", "2", "--stop-at", "4") == 0
    assert load_training(run / "prev")["step"] == 2
    weights = run / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(run / "last"), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memrnn: error: checkpoint")
    assert "model.safetensors has" in err and "truncated" in err

    assert main(["train", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "memrnn: warning:" in err and "last" in err and f"resuming from {run / 'prev'}" in err
    # Resumed from step 2, the run still ends with the uninterrupted run's weights.
    _assert_same_weights(tmp_path / "full", run)


def test_altered_checkpoint_fails_its_checksum(tmp_path, capsys):
    assert _run(tmp_path, "--steps", "2") == 0
    for tag in ("last", "best"):
        path = tmp_path / tag / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "does not match its SHA-256" in err and err.count("\n") == 1
    assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "3"]) == 2
    assert "no intact checkpoint left" in capsys.readouterr().err


# -- non-finite losses and gradients ----------------------------------------------------------
def test_diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    # An absurd learning rate: the first step's update makes the second step's loss infinite.
    code = main(
        [
            "train",
            "--model",
            MODEL,
            "--task",
            "adding",
            "--steps",
            "20",
            "--batch-size",
            "8",
            "--eval-every",
            "1",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--grad-clip",
            "0",
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "the training loss is" in err and "at step 2 " in err
    assert f"the last good checkpoint is {tmp_path / 'last'} (step 1)" in err
    assert load_training(tmp_path / "last")["step"] == 1
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path).values())


def test_nonfinite_gradients_stop_the_run_or_are_skipped(tmp_path, capsys):
    base = ["--steps", "5", "--debug-nan-at-step", "3"]
    assert _run(tmp_path / "stop", *base) == 3
    assert "the gradient norm is nan at step 3" in capsys.readouterr().err
    assert _run(tmp_path / "skip", *base, "--skip-nonfinite-grads") == 0
    skipped = [
        (int(r["step"]), r["skipped"])
        for r in read_metrics(tmp_path / "skip")
        if r["split"] == "train"
    ]
    assert skipped == [(1, "0"), (2, "0"), (3, "1"), (4, "1"), (5, "1")]
    assert load_training(tmp_path / "skip" / "last")["skipped"] == 1
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "skip").values())


# -- the network's input check ----------------------------------------------------------------
def test_network_dtype_mismatch_names_both_dtypes() -> None:
    from memrnn.models import create_model

    model = create_model("bmru-small", input_size=3, output_size=2, d_model=8)
    with pytest.raises(
        TypeError,
        match=r"`x` has dtype torch.float64 but the parameters are "
        r"torch.float32",
    ):
        model(torch.randn(2, 4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"`x_t` has dtype torch.float64"):
        model.step(torch.randn(2, 3, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(torch.randn(2, 4, 3, dtype=torch.bfloat16))
    assert out.shape == (2, 2)
