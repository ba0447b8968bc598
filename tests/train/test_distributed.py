"""Data-parallel helpers: a 2-process gloo run trains exactly like a 1-process run."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from memrnn.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    global_batch_seed,
    is_main,
    rank_slice,
    setup_distributed,
    shard_generator_seed,
    unwrap,
    wrap_ddp,
)

# One training run: every rank draws the global batch of 8 and keeps its slice (4 per rank
# with 2 processes). Launched with the environment variables torchrun would set.
WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from memrnn.models import create_model
    from memrnn.tasks import create_task
    from memrnn.train.distributed import (all_reduce_mean, cleanup, global_batch_seed, is_main,
                                          rank_slice, setup_distributed, unwrap, wrap_ddp)

    info = setup_distributed()
    torch.manual_seed(0)
    task = create_task("adding", seq_len=12, seed=0)
    model = create_model("mingru-small", task.input_size, task.output_size, d_model=8,
                         n_layers=1).double()
    model = wrap_ddp(model, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = rank_slice(8, info)
    losses = []
    for step in range(5):
        gen = torch.Generator().manual_seed(global_batch_seed(0, step))
        batch = task.batch(8, generator=gen)
        batch = type(batch)(*(None if v is None else v[rows] for v in batch))
        out, _ = model(batch.x.double())  # (B/W, 1)
        # In float64 (the task's loss computes in float32).
        loss = torch.nn.functional.mse_loss(out, batch.y.double())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(all_reduce_mean(loss.detach(), info).item())
    params = [p.detach().sum().item() for p in unwrap(model).parameters()]
    if is_main():
        with open(sys.argv[1], "w") as f:
            json.dump({"losses": losses, "params": params, "world_size": info.world_size}, f)
    cleanup()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, out: Path, world_size: int, port: int) -> list[subprocess.Popen]:
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def test_two_process_training_matches_one_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    procs = _launch(script, two, 2, _free_port())
    # The 1-process run goes in this process while the two workers start up.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "1")
        mp.setenv("RANK", "0")
        mp.setattr(sys, "argv", [str(script), str(one)])
        runpy.run_path(str(script), run_name="__main__")
    for p in procs:
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 0, output.decode()[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    # float64: only the order of the gradient/loss reductions differs between the runs.
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-10)
    assert a["params"] == pytest.approx(b["params"], rel=1e-10, abs=1e-12)
    assert a["losses"][-1] < a["losses"][0]


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = setup_distributed(device="cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.distributed and is_main()
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model and unwrap(model) is model
    assert all_reduce_mean(2.5, info) == 2.5
    t = torch.ones(3)
    assert all_reduce_mean(t, info) is t
    barrier()
    cleanup()
    assert rank_slice(8, info) == slice(0, 8)


def test_slices_and_seeds() -> None:
    infos = [DistInfo(r, 4) for r in range(4)]
    slices = [rank_slice(12, i) for i in infos]
    assert slices == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]
    with pytest.raises(ValueError, match="does not split evenly over 4"):
        rank_slice(10, infos[0])
    assert global_batch_seed(0, 1) != global_batch_seed(0, 2) != global_batch_seed(1, 1)
    assert global_batch_seed(3, 5) == global_batch_seed(3, 5)
    seeds = {shard_generator_seed(7, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)


def test_setup_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="inconsistent"):
        setup_distributed(device="cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        setup_distributed(device="cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        setup_distributed(backend="mpi", device="cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' is not an integer"):
        setup_distributed(device="cpu")
