"""BRC and nBRC: the compiled sequence kernels vs the torch step loop, side by side.

Both cells are recurrent-only; their `backend` picks how a sequence runs: "numba", compiled
kernels for the forward and backward pass through time (`memrnn.ops.brc.numba`), or
"naive", torch ops per step. Timed in float32 for a training step (forward + backward of a
sum of squares) and for inference, the two backends taking turns, at two shapes: the
copy-first-input experiment's network (2 layers x 100 with encoder, norms and head; batch 32,
T = 300) and one unit at the unit benchmark's shape (B = 16, D = H = 128, T = 1024). The
backends are first checked against each other (float64 outputs and gradients); no speed-up is
reported if they disagree.

    python -m benchmarks.brc [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import format_table, print_header, time_interleaved, write_results
from memrnn.models import create_model
from memrnn.runtime import keep_freed_memory
from memrnn.units import BRC, NBRC

BACKENDS = ("numba", "naive")
CELLS = {"brc": BRC, "nbrc": NBRC}


def _set_backend(module: nn.Module, backend: str) -> None:
    for m in module.modules():
        if isinstance(m, (BRC, NBRC)):
            m.backend = backend


def _run(module: nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        module.zero_grad(set_to_none=True)
        y = module(x)[0]
        y.square().sum().backward()
    else:
        with torch.no_grad():
            module(x)


def check_agreement(name: str) -> float:
    """Largest difference between the backends on outputs, final state and the gradients of
    the input and every parameter (float64), relative to the largest entry of each."""
    torch.manual_seed(0)
    unit = CELLS[name](5, 8, output_size=3).double()
    x = torch.randn(3, 40, 5, dtype=torch.float64)
    results = []
    for backend in BACKENDS:
        unit.backend = backend
        unit.zero_grad(set_to_none=True)
        xb = x.clone().requires_grad_()
        y, state = unit(xb)
        (y.square().sum() + state.h.sum()).backward()
        results.append(
            [y.detach(), state.h.detach(), xb.grad, *(p.grad for p in unit.parameters())]
        )
    return max(
        ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()
        for a, b in zip(*results, strict=True)
    )


def _cases(quick: bool) -> list[tuple[str, str, Callable[[], nn.Module], tuple[int, int, int]]]:
    """(case, cell, builder, input shape (B, T, D))."""
    cases = []
    for name, cls in CELLS.items():
        network = partial(create_model, f"{name}-small", 1, 1, d_model=100, n_layers=2, mlp=False)
        cases.append(("network 2x100", name, network, (8, 60, 1) if quick else (32, 300, 1)))
        width = 32 if quick else 128
        shape = (4, 128, width) if quick else (16, 1024, width)
        cases.append((f"unit {width}", name, partial(cls, width, width), shape))
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--out-dir", type=Path, help="default benchmarks/results")
    args = parser.parse_args(argv)
    keep_freed_memory()
    info = print_header("BRC / nBRC: compiled sequence kernels vs the torch step loop")
    for name in CELLS:
        diff = check_agreement(name)
        print(
            f"# {name}: native vs loop (float64, outputs and gradients): max rel diff = {diff:.2e}"
        )
        if diff > 1e-9:
            raise SystemExit(f"{name}: the numba and naive backends disagree; not reporting speed")
    repeats = 2 if args.quick else 7
    rows = []
    for case, name, build, shape in _cases(args.quick):
        torch.manual_seed(0)
        module = build()
        x = torch.randn(shape)
        for train in (True, False):

            def run(backend: str, module: nn.Module = module, x=x, train: bool = train) -> None:
                _set_backend(module, backend)
                _run(module, x, train)

            seconds = time_interleaved({b: partial(run, b) for b in BACKENDS}, repeats)
            for backend in BACKENDS:
                rows.append(
                    {
                        "case": case,
                        "cell": name,
                        "pass": "train" if train else "inference",
                        "path": backend,
                        "batch": shape[0],
                        "T": shape[1],
                        "seconds": seconds[backend],
                        "speedup_vs_loop": seconds["naive"] / seconds[backend],
                    }
                )
    print(
        format_table(
            rows, ["case", "cell", "pass", "path", "batch", "T", "seconds", "speedup_vs_loop"]
        )
    )
    csv_path, json_path = write_results(
        "brc_quick" if args.quick else "brc", rows, info, args.out_dir
    )
    print(f"# wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
