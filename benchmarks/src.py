"""SRC network speed: fused sequence loop vs a plain Python loop of the same step.

A 3-layer, 128-neuron SpikingNetwork at batch 64 over 220 steps (the SRC paper's 20 + 200
step image encoding), timed for training (forward + backward) and inference, both paths in the
same run. The paths are first checked to agree (outputs and gradients, float64); no speed-up
is reported if they do not.

    python -m benchmarks.src [--quick]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import format_table, print_header, time_fn, write_results
from memrnn.models.spiking import SpikingNetwork


def _set_fused(net: SpikingNetwork, fused: bool) -> None:
    for layer in net.layers:
        layer.fused = fused


def _run(net: SpikingNetwork, x: torch.Tensor, train: bool) -> None:
    if train:
        net.zero_grad(set_to_none=True)
        out, _ = net(x)
        out[:, -1].sum().backward()
    else:
        with torch.no_grad():
            net(x)


def check_agreement(hidden: int, layers: int) -> float:
    """Largest difference between the paths on outputs and parameter gradients (float64)."""
    torch.manual_seed(0)
    net = SpikingNetwork(hidden, [hidden] * layers, 10, weight_gain=4.0).double()
    x = (torch.rand(4, 60, hidden, dtype=torch.float64) < 0.2).double()
    results = []
    for fused in (True, False):
        _set_fused(net, fused)
        net.zero_grad(set_to_none=True)
        out, _ = net(x)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*results, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    args = parser.parse_args(argv)
    batch, steps, hidden, layers = (16, 60, 128, 3) if args.quick else (64, 220, 128, 3)
    repeats = 2 if args.quick else 5
    info = print_header("SRC network: fused loop vs plain loop")
    diff = check_agreement(16, layers)
    print(f"# agreement (float64, outputs and gradients): max |diff| = {diff:.2e}")
    if diff > 1e-9:
        raise SystemExit("fused and plain loops disagree; not reporting speed")
    torch.manual_seed(0)
    net = SpikingNetwork(hidden, [hidden] * layers, 10, weight_gain=4.0)
    x = (torch.rand(batch, steps, hidden) < 0.1).float()
    rows = []
    for train in (True, False):
        seconds = {}
        for fused in (True, False):
            _set_fused(net, fused)
            seconds[fused] = time_fn(lambda t=train: _run(net, x, t), repeats=repeats, warmup=1)
        for fused in (True, False):
            rows.append(
                {
                    "pass": "train" if train else "inference",
                    "path": "fused" if fused else "plain",
                    "batch": batch,
                    "steps": steps,
                    "hidden": hidden,
                    "layers": layers,
                    "seconds": seconds[fused],
                    "steps_per_s": steps / seconds[fused],
                    "speedup_vs_plain": seconds[False] / seconds[fused],
                }
            )
    print(
        format_table(
            rows, ["pass", "path", "batch", "steps", "seconds", "steps_per_s", "speedup_vs_plain"]
        )
    )
    csv_path, json_path = write_results("src_quick" if args.quick else "src", rows, info)
    print(f"# wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
