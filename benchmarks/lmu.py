"""Training-step speed of the parallel LMU: fft, direct and final readout vs recurrent vs an LSTM.

    python -m benchmarks.lmu              # psMNIST shape: B=32, T=784, 1 feature, order 468, H=346
    python -m benchmarks.lmu --quick      # tiny shapes, a few seconds
    python -m benchmarks.lmu --crossover  # direct vs fft per length: where `conv="auto"` switches

One training step is forward + backward of a 10-class cross-entropy on the last step's output
(a linear head, as in the psMNIST model of Chilkuri & Eliasmith 2021); every LMU setting
("fft", "direct": the parallel mode's convolution; "final": the last-step readout; "recurrent")
computes the same loss. The LSTM peer (torch.nn.LSTM) gets the hidden width whose parameter count is
closest to the LMU layer's. Before any time is reported the modes are checked against
recurrent mode in float64 (loss and every gradient); a mode that disagrees is reported as
failed and gets no ratio.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import format_table, print_header, time_fn, write_results
from memrnn.units.lmu import ParallelLMU

LMU_MODES = ("fft", "direct", "final", "recurrent")
CHECK_STEPS = 96


def _lmu_loss(layer: ParallelLMU, head: nn.Linear, x: Tensor, target: Tensor, mode: str) -> Tensor:
    # One name per setting: a convolution of the parallel mode, the final readout, or recurrent.
    layer.mode = "recurrent" if mode == "recurrent" else "parallel"
    layer.readout = "final" if mode == "final" else "sequence"
    if mode in ("fft", "direct"):
        layer.conv = mode
    y, _ = layer(x)
    return F.cross_entropy(head(y[:, -1]), target)


def _lstm_loss(lstm: nn.LSTM, head: nn.Linear, x: Tensor, target: Tensor) -> Tensor:
    y, _ = lstm(x)
    return F.cross_entropy(head(y[:, -1]), target)


def _gradients(modules: list[nn.Module], loss: Tensor) -> list[Tensor]:
    params = [p for m in modules for p in m.parameters()]
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def modes_agree(layer: ParallelLMU, head: nn.Linear, x: Tensor, target: Tensor) -> dict[str, bool]:
    """Loss and gradients of each mode vs recurrent mode, in float64 on the first steps."""
    layer64, head64 = copy.deepcopy(layer).double(), copy.deepcopy(head).double()
    x64 = x[:, :CHECK_STEPS].double()
    results = {}
    for mode in LMU_MODES:
        loss = _lmu_loss(layer64, head64, x64, target, mode)
        results[mode] = [loss.detach(), *_gradients([layer64, head64], loss)]
    ref = results["recurrent"]
    return {
        mode: all(
            torch.allclose(a, b, rtol=1e-8, atol=1e-10) for a, b in zip(got, ref, strict=True)
        )
        for mode, got in results.items()
    }


def lstm_width(target_params: int, input_size: int) -> int:
    """The nn.LSTM hidden width whose parameter count is closest to target_params."""

    def count(h: int) -> int:
        return 4 * (h * input_size + h * h + 2 * h)

    return min(range(1, 4096), key=lambda h: abs(count(h) - target_params))


def train_steps(args: argparse.Namespace, info: dict[str, Any]) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    layer = ParallelLMU(1, args.hidden, order=args.order, theta=args.theta)
    head = nn.Linear(args.hidden, 10)
    lmu_params = sum(p.numel() for p in layer.parameters())
    width = lstm_width(lmu_params, 1)
    lstm = nn.LSTM(1, width, batch_first=True)
    lstm_head = nn.Linear(width, 10)
    x = torch.randn(args.batch, args.steps, 1)
    target = torch.randint(0, 10, (args.batch,))

    agree = modes_agree(layer, head, x, target)
    print(f"# modes agree with recurrent (float64, first {CHECK_STEPS} steps): {agree}")

    def lmu_step(mode: str) -> None:
        loss = _lmu_loss(layer, head, x, target, mode)
        loss.backward()

    def lstm_step() -> None:
        _lstm_loss(lstm, lstm_head, x, target).backward()

    seconds: dict[str, float] = {}
    for mode in LMU_MODES:
        slow = mode == "recurrent"
        seconds[mode] = time_fn(
            lambda mode=mode: lmu_step(mode),
            repeats=2 if slow else args.repeats,
            warmup=0 if slow else 1,
            max_seconds=args.max_seconds,
        )
        print(f"#   plmu {mode:9s} {seconds[mode]:.4f} s/step")
    seconds["lstm"] = time_fn(
        lstm_step, repeats=args.repeats, warmup=1, max_seconds=args.max_seconds
    )
    print(f"#   lstm      {seconds['lstm']:.4f} s/step")

    # The float32 losses of the timed runs must also agree (the check above is float64).
    with torch.no_grad():
        losses = {mode: _lmu_loss(layer, head, x, target, mode).item() for mode in LMU_MODES}
    float32_ok = {
        m: abs(v - losses["recurrent"]) <= 1e-4 * max(1.0, abs(v)) for m, v in losses.items()
    }

    rows = []
    for name in (*LMU_MODES, "lstm"):
        ok = True if name == "lstm" else agree[name] and float32_ok[name]
        row = {
            "model": "lstm" if name == "lstm" else "plmu",
            "mode": "recurrent" if name == "lstm" else name,
            "batch": args.batch,
            "steps": args.steps,
            "order": args.order,
            "hidden": args.hidden,
            "params": (4 * (width + width * width + 2 * width)) if name == "lstm" else lmu_params,
            "seconds": seconds[name],
            "agrees": ok,
            "speedup_vs_recurrent": seconds["recurrent"] / seconds[name] if ok else None,
            "speedup_vs_lstm": seconds["lstm"] / seconds[name] if ok else None,
        }
        if name == "lstm":
            row["hidden"] = width
        rows.append(row)
    best = min(
        (r for r in rows if r["model"] == "plmu" and r["mode"] != "recurrent" and r["agrees"]),
        key=lambda r: r["seconds"],
        default=None,
    )
    print(
        format_table(
            rows,
            [
                "model",
                "mode",
                "params",
                "seconds",
                "agrees",
                "speedup_vs_recurrent",
                "speedup_vs_lstm",
            ],
        )
    )
    if best is None:
        print("# no parallel mode agrees with recurrent mode: no speed-up reported")
    else:
        print(
            f"# best parallel mode: {best['mode']}, {best['speedup_vs_recurrent']:.1f}x faster "
            f"than recurrent mode, {best['speedup_vs_lstm']:.1f}x faster than the LSTM"
        )
    return rows


def crossover(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training-step time of direct vs fft per length, for a small and the psMNIST order."""
    rows = []
    lengths = (4, 8, 16, 32, 64, 128) if args.quick else (8, 16, 32, 64, 96, 128, 256, 512)
    for order in (8, 32) if args.quick else (8, 64, 468):
        torch.manual_seed(0)
        layer = ParallelLMU(1, args.hidden, order=order, theta=max(lengths))
        head = nn.Linear(args.hidden, 10)
        target = torch.randint(0, 10, (args.batch,))
        for steps in lengths:
            x = torch.randn(args.batch, steps, 1)
            times = {}
            for mode in ("direct", "fft"):
                times[mode] = time_fn(
                    lambda mode=mode, layer=layer, head=head, x=x, target=target: _lmu_loss(
                        layer, head, x, target, mode
                    ).backward(),
                    repeats=args.repeats,
                    warmup=1,
                    max_seconds=args.max_seconds,
                )
            rows.append(
                {
                    "order": order,
                    "steps": steps,
                    "direct_s": times["direct"],
                    "fft_s": times["fft"],
                    "fft_over_direct": times["fft"] / times["direct"],
                }
            )
    print(format_table(rows, ["order", "steps", "direct_s", "fft_s", "fft_over_direct"]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes for a smoke run")
    parser.add_argument("--crossover", action="store_true", help="time raw vs fft per length")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--order", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--theta", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    defaults = (
        {"batch": 4, "steps": 64, "order": 16, "hidden": 32, "theta": 64.0}
        if args.quick
        else {"batch": 32, "steps": 784, "order": 468, "hidden": 346, "theta": 784.0}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    info = print_header("parallel LMU training step (forward + backward)")
    suffix = "_quick" if args.quick else ""
    if args.crossover:
        rows = crossover(args)
        paths = write_results(f"lmu_crossover{suffix}", rows, info)
    else:
        rows = train_steps(args, info)
        paths = write_results(f"lmu{suffix}", rows, info)
    print(f"# wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
