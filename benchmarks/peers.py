"""memrnn against peer libraries installed from PyPI, on the same shapes, in one run.

    python -m benchmarks.peers [--quick] [--lengths 256 1024 4096 16384]

- Scan: `accelerated-scan`'s pure-torch reference (`accelerated_scan.ref.scan`, layout (B, C, T))
  against `memrnn.scan.linear_scan` (layout (B, T, C)), each fed its own layout so that no
  transpose is timed. On CUDA the peer's Triton kernel (`accelerated_scan.warp.scan`) is timed
  too. Outputs are checked equal before any ratio is reported.
- minGRU: `mingru-pytorch`'s `minGRU` against `memrnn.units.MinGRU`, a training step
  (forward + backward) at the same width. The two are not the same function: the peer uses the
  log-space form (positive states through g(x), a log-cumsum-exp scan) while memrnn computes
  the plain recurrence h_t = (1 - z_t) h_{t-1} + z_t h~_t with a linear scan; the comparison is
  speed at equal shapes and parameter count, not equivalence.
Install the peers with `pip install -e ".[bench]"` (the Makefile's environment has them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import format_table, print_header, time_fn, write_results
from memrnn.scan import linear_scan
from memrnn.units import MinGRU


def _scan_rows(lengths: list[int], batch: int, width: int, repeats: int, device: torch.device):
    from accelerated_scan.ref import scan as peer_scan

    peer_kernels = {"accelerated-scan ref (torch)": peer_scan}
    if device.type == "cuda":
        from accelerated_scan.warp import scan as peer_warp

        peer_kernels["accelerated-scan warp (triton)"] = peer_warp
    gen = torch.Generator().manual_seed(0)
    rows = []
    for T in lengths:
        a = torch.rand(batch, T, width, generator=gen).to(device)
        b = torch.randn(batch, T, width, generator=gen).to(device)
        grad = torch.randn(batch, T, width, generator=gen).to(device)
        a_t, b_t, grad_t = (x.transpose(1, 2).contiguous() for x in (a, b, grad))
        ours_h, _ = linear_scan(a, b)

        def ours_fb(a=a, b=b, grad=grad):
            a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
            linear_scan(a_, b_)[0].backward(grad)

        ours_fwd = time_fn(lambda a=a, b=b: linear_scan(a, b), repeats=repeats, device=device)
        ours_fb_s = time_fn(ours_fb, repeats=repeats, device=device)
        rows.append(
            {
                "bench": "scan",
                "T": T,
                "impl": "memrnn linear_scan",
                "agrees": True,
                "forward_ms": ours_fwd * 1e3,
                "fwd_bwd_ms": ours_fb_s * 1e3,
            }
        )
        for name, fn in peer_kernels.items():
            peer_h = fn(a_t, b_t).transpose(1, 2)
            ok = torch.allclose(peer_h, ours_h, rtol=1e-4, atol=1e-4)

            def peer_fb(fn=fn, a_t=a_t, b_t=b_t, grad_t=grad_t):
                a_, b_ = a_t.clone().requires_grad_(), b_t.clone().requires_grad_()
                fn(a_, b_).backward(grad_t)

            fwd = time_fn(
                lambda fn=fn, a_t=a_t, b_t=b_t: fn(a_t, b_t), repeats=repeats, device=device
            )
            fb = time_fn(peer_fb, repeats=repeats, device=device)
            rows.append(
                {
                    "bench": "scan",
                    "T": T,
                    "impl": name,
                    "agrees": ok,
                    "forward_ms": fwd * 1e3,
                    "fwd_bwd_ms": fb * 1e3,
                    "memrnn_speedup_fwd": fwd / ours_fwd if ok else None,
                    "memrnn_speedup_fwd_bwd": fb / ours_fb_s if ok else None,
                }
            )
        print(f"#   scan T={T} done", flush=True)
    return rows


def _mingru_rows(lengths: list[int], batch: int, width: int, repeats: int, device: torch.device):
    from minGRU_pytorch import minGRU as PeerMinGRU

    torch.manual_seed(0)
    ours = MinGRU(width, width).to(device)
    peer = PeerMinGRU(width).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    rows = []
    for T in lengths:
        x = torch.randn(batch, T, width, device=device)

        def step_ours(x=x):
            ours.zero_grad(set_to_none=True)
            y, _ = ours(x)
            y.square().mean().backward()

        def step_peer(x=x):
            peer.zero_grad(set_to_none=True)
            peer(x).square().mean().backward()

        t_ours = time_fn(step_ours, repeats=repeats, device=device)
        t_peer = time_fn(step_peer, repeats=repeats, device=device)
        rows.append(
            {
                "bench": "mingru",
                "T": T,
                "impl": f"memrnn MinGRU ({n_ours} params)",
                "fwd_bwd_ms": t_ours * 1e3,
            }
        )
        rows.append(
            {
                "bench": "mingru",
                "T": T,
                "impl": f"mingru-pytorch minGRU ({n_peer} params)",
                "fwd_bwd_ms": t_peer * 1e3,
                "memrnn_speedup_fwd_bwd": t_peer / t_ours,
            }
        )
        print(f"#   minGRU T={T} done", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--scan-width", type=int, default=256)
    parser.add_argument("--model-width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024}, 2 repeats")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats = [256, 1024], 2
    device = torch.device(args.device)
    info = print_header(f"memrnn vs peers on {device}")
    try:
        rows = _scan_rows(args.lengths, args.batch, args.scan_width, args.repeats, device)
        rows += _mingru_rows(args.lengths, args.batch, args.model_width, args.repeats, device)
    except ImportError as err:
        raise SystemExit(
            f"peer library missing ({err}); install with: pip install -e '.[bench]'"
        ) from err
    columns = [
        "bench",
        "T",
        "impl",
        "agrees",
        "forward_ms",
        "fwd_bwd_ms",
        "memrnn_speedup_fwd",
        "memrnn_speedup_fwd_bwd",
    ]
    print(format_table(rows, columns))
    csv_path, json_path = write_results("peers", rows, info, args.out)
    print(f"wrote {csv_path}, {json_path}")


if __name__ == "__main__":
    main()
