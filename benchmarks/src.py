"""SRC network speed: the compiled kernel and the torch sequence loop vs a plain step loop.

A 3-layer, 128-neuron SpikingNetwork at batch 64 over 220 steps (the SRC paper's 20 + 200
step image encoding), float32, timed for training (forward + backward) and inference, every
backend in the same run ("numba": compiled kernels; "torch": one autograd node looping in torch
ops; "naive": a plain Python loop of `src_step`, the baseline). Every backend is first checked
against the loop (outputs and gradients, float64); no speed-up is reported if one disagrees.

    python -m benchmarks.src [--quick]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from benchmarks.common import format_table, print_header, time_interleaved, write_results
from memrnn.models.spiking import SpikingNetwork

BACKENDS = ("numba", "torch", "naive")


def _set_backend(net: SpikingNetwork, backend: str) -> None:
    for layer in net.layers:
        layer.backend = backend


def _run(net: SpikingNetwork, x: torch.Tensor, train: bool) -> None:
    if train:
        net.zero_grad(set_to_none=True)
        out, _ = net(x)
        out[:, -1].sum().backward()
    else:
        with torch.no_grad():
            net(x)


def _time_interleaved(
    net: SpikingNetwork, x: torch.Tensor, train: bool, repeats: int
) -> dict[str, float]:
    """Median seconds per backend, the backends taking turns (`time_interleaved`)."""

    def run(backend: str) -> None:
        _set_backend(net, backend)
        _run(net, x, train)

    return time_interleaved({b: partial(run, b) for b in BACKENDS}, repeats)


def check_agreement(hidden: int, layers: int, backend: str) -> float:
    """Largest difference between `backend` and the plain loop on outputs and parameter
    gradients (float64), relative to the largest entry of each."""
    torch.manual_seed(0)
    net = SpikingNetwork(hidden, [hidden] * layers, 10, weight_gain=4.0).double()
    x = (torch.rand(4, 60, hidden, dtype=torch.float64) < 0.2).double()
    results = []
    for b in (backend, "naive"):
        _set_backend(net, b)
        net.zero_grad(set_to_none=True)
        out, _ = net(x)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
    assert all(s.max() > 0.5 for s in net.last_spikes), "the check network must spike"
    return max(
        ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()
        for a, b in zip(*results, strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    batch, steps, hidden, layers = (16, 60, 128, 3) if args.quick else (64, 220, 128, 3)
    repeats = 2 if args.quick else 5
    info = print_header("SRC network: numba kernel and torch loop vs plain step loop")
    for backend in BACKENDS[:-1]:
        diff = check_agreement(16, layers, backend)
        print(f"# {backend} vs loop (float64, outputs and gradients): max rel diff = {diff:.2e}")
        if diff > 1e-9:
            raise SystemExit(f"{backend} and the plain loop disagree; not reporting speed")
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    net = SpikingNetwork(hidden, [hidden] * layers, 10, weight_gain=4.0).to(dtype)
    x = (torch.rand(batch, steps, hidden) < 0.1).to(dtype)
    rows = []
    for train in (True, False):
        seconds = _time_interleaved(net, x, train, repeats)
        for backend in BACKENDS:
            rows.append(
                {
                    "pass": "train" if train else "inference",
                    "path": backend,
                    "batch": batch,
                    "steps": steps,
                    "hidden": hidden,
                    "layers": layers,
                    "dtype": args.dtype,
                    "seconds": seconds[backend],
                    "steps_per_s": steps / seconds[backend],
                    "speedup_vs_loop": seconds["naive"] / seconds[backend],
                }
            )
    print(
        format_table(
            rows,
            [
                "pass",
                "path",
                "dtype",
                "batch",
                "steps",
                "seconds",
                "steps_per_s",
                "speedup_vs_loop",
            ],
        )
    )
    csv_path, json_path = write_results(
        ("src_quick" if args.quick else "src") + ("" if args.dtype == "float32" else "_f64"),
        rows,
        info,
    )
    print(f"# wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
