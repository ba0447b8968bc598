"""Speed of `linear_scan` backends against the autograd loop and a bandwidth proxy.

    python -m benchmarks.scan            # B=16, N=256, T in {256, 1024, 4096, 16384}, float32
    python -m benchmarks.scan --quick    # small and fast (used by `make demo` smoke runs)

For every length it times forward and forward+backward of the `naive` loop (autograd
through a Python loop), `torch` (the tree) and `numba`, and in the same run a bandwidth
proxy: one elementwise pass that reads a and b and writes a new tensor (torch.addcmul), the
least memory traffic any scan must do. Ratios are to the loop (speed-up) and to the proxy (how far
from memory-bound). A backend whose outputs or gradients disagree with the loop is reported
as failed and gets no ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import format_table, print_header, time_fn, write_results
from memrnn.ops.scan import linear_scan, resolve_backend

BACKENDS = ("naive", "torch", "numba")


def _forward(backend: str, a: torch.Tensor, b: torch.Tensor) -> None:
    linear_scan(a, b, backend=backend)


def _forward_backward(backend: str, a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor) -> None:
    a.grad = b.grad = None
    h, _ = linear_scan(a, b, backend=backend)
    h.backward(grad)


def _agrees(backend: str, a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor) -> bool:
    """Outputs and gradients on the first 256 steps match the loop (float64 recomputation)."""
    a64 = a.detach()[:, :256].double().requires_grad_()
    b64 = b.detach()[:, :256].double().requires_grad_()
    g64 = grad[:, :256].double()
    results = []
    for name in ("naive", backend):
        a64.grad = b64.grad = None
        h, _ = linear_scan(a64, b64, backend=name)
        h.backward(g64)
        results.append((h.detach(), a64.grad.clone(), b64.grad.clone()))
    return all(torch.allclose(x, y, rtol=1e-9, atol=1e-9) for x, y in zip(*results, strict=True))


def run(
    lengths: list[int], batch: int, width: int, repeats: int, out_dir: Path | None
) -> list[dict]:
    info = print_header("linear_scan benchmark")
    print(
        f"#   shape: B={batch}, N={width}, float32; auto backend on CPU: "
        f"{resolve_backend(torch.device('cpu'), torch.float32)}"
    )
    rows = []
    gen = torch.Generator().manual_seed(0)
    for T in lengths:
        # Decays in (0, 1) as in a stable recurrence; inputs standard normal.
        a = torch.rand(batch, T, width, generator=gen).requires_grad_()
        b = torch.randn(batch, T, width, generator=gen).requires_grad_()
        grad = torch.randn(batch, T, width, generator=gen)
        a_d, b_d = a.detach(), b.detach()
        proxy = time_fn(lambda a_d=a_d, b_d=b_d: torch.addcmul(b_d, a_d, b_d), repeats=repeats)
        timings = {}
        for backend in BACKENDS:
            ok = backend == "naive" or _agrees(backend, a, b, grad)
            # The loop is slow at the longest lengths: one repetition there. At T = 4096 it is
            # timed like the others (median of `repeats`), since its single runs vary by 1.5x.
            reps = 1 if backend == "naive" and T > 4096 else repeats
            fwd = time_fn(lambda be=backend, a_d=a_d, b_d=b_d: _forward(be, a_d, b_d), repeats=reps)
            fb = time_fn(
                lambda be=backend, a=a, b=b, g=grad: _forward_backward(be, a, b, g), repeats=reps
            )
            timings[backend] = (fwd, fb, ok)
        loop_fwd, loop_fb, _ = timings["naive"]
        for backend, (fwd, fb, ok) in timings.items():
            rows.append(
                {
                    "T": T,
                    "backend": backend,
                    "agrees": ok,
                    "forward_ms": fwd * 1e3,
                    "fwd_bwd_ms": fb * 1e3,
                    "proxy_ms": proxy * 1e3,
                    "fwd_vs_proxy": fwd / proxy if ok else None,
                    "fwd_speedup_vs_loop": loop_fwd / fwd if ok else None,
                    "fwd_bwd_speedup_vs_loop": loop_fb / fb if ok else None,
                }
            )
        print(f"#   T={T} done", flush=True)
    columns = [
        "T",
        "backend",
        "agrees",
        "forward_ms",
        "fwd_bwd_ms",
        "proxy_ms",
        "fwd_vs_proxy",
        "fwd_speedup_vs_loop",
        "fwd_bwd_speedup_vs_loop",
    ]
    print(format_table(rows, columns))
    csv_path, json_path = write_results("scan", rows, info, out_dir)
    plot_path = _plot(rows, (out_dir or csv_path.parent) / "scan.png")
    print(f"wrote {csv_path}, {json_path}" + (f", {plot_path}" if plot_path else ""))
    return rows


def _plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in BACKENDS:
        pts = [(r["T"], r["fwd_bwd_ms"]) for r in rows if r["backend"] == backend]
        ax.loglog(*zip(*pts, strict=True), marker="o", label=f"{backend} fwd+bwd")
    pts = [(r["T"], r["proxy_ms"]) for r in rows if r["backend"] == "numba"]
    ax.loglog(*zip(*pts, strict=True), linestyle="--", color="gray", label="bandwidth proxy")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("time (ms)")
    ax.set_title("linear_scan, B=16, N=256, float32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024}, 3 repeats")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats = [256, 1024], 3
    run(args.lengths, args.batch, args.width, args.repeats, args.out)


if __name__ == "__main__":
    main()
