"""The Triton kernels on a CUDA GPU, in one run of a few minutes:

    python -m benchmarks.gpu --device cuda [--repeats 20] [--out DIR]

- Scan forward + backward (`memrnn.ops.scan.triton.linear_scan`, float32) at
  B = 16, T = 4096, N = 256 and B = 1, T = 65 536, N = 128, against the bandwidth floor: the
  bytes that the scan must move (forward reads a, b and writes h; backward reads a, h, ∂L/∂h
  and writes ∂L/∂a, ∂L/∂b: 8 · 4 bytes per element) over the GPU's memory bandwidth, both the
  datasheet figure (a table by GPU name) and a measured device-to-device copy. The peer
  `accelerated-scan` (its Triton kernel) is timed at the same shapes when it is installed.
- Training steps (forward + backward of a sum-of-squares loss, input with gradient) at
  B = 16, T = 4096, D = N = 128 of the BMRU (ε = 0) and CMRU (ε = 1) layers, the minGRU and
  the LRU layers on the Triton kernels, against `torch.nn.GRU` (cuDNN) of the same width and,
  when installed, `mingru-pytorch`'s minGRU.

Every kernel is first checked against the torch path at a short length (T = 300); a failed
check is reported and no ratio is given for that row. Results go to
benchmarks/results/gpu_<gpu name>.csv and .json, with the GPU's name, torch, triton and the
commit. Without a CUDA device the script stops with a one-line error (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from benchmarks.common import format_table, machine_info, print_header, time_fn, write_results

SCAN_SHAPES = ((16, 4096, 256), (1, 65536, 128))
UNIT_SHAPE = (16, 4096, 128)  # B, T, D = N
# Datasheet memory bandwidth in GB/s, matched against torch.cuda.get_device_name in order.
BANDWIDTH_GBS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("A10G", 600.0),
    ("L4", 300.0),
    ("RTX 4090", 1008.0),
    ("V100", 900.0),
    ("T4", 320.0),
)


def datasheet_bandwidth(name: str) -> float | None:
    """Bytes per second from the table, or None for a GPU not in it."""
    for key, gbs in BANDWIDTH_GBS:
        if key in name:
            return gbs * 1e9
    return None


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), repeats=repeats, device=device)
    return 2 * src.numel() * 4 / seconds


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-3) -> bool:
    return bool(torch.allclose(got.float(), want.float(), atol=tol, rtol=tol))


def scan_rows(device: torch.device, repeats: int, bandwidths: dict[str, float | None]):
    from memrnn.ops.scan.triton import linear_scan
    from memrnn.scan import linear_scan as torch_scan

    try:
        from accelerated_scan.warp import scan as peer_scan
    except (ImportError, OSError, RuntimeError) as err:
        # Its import builds a CUDA extension, which needs the CUDA toolkit (CUDA_HOME).
        print(f"# accelerated-scan not timed: {type(err).__name__}: {err}")
        peer_scan = None
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for B, T, N in SCAN_SHAPES:
        a = torch.rand(B, T, N, device=device, generator=gen) * 0.5 + 0.5
        b = torch.randn(B, T, N, device=device, generator=gen)
        gh = torch.randn(B, T, N, device=device, generator=gen)
        h0 = torch.zeros(B, N, device=device)
        a.requires_grad_()
        b.requires_grad_()
        h = linear_scan(a, b, h0)
        h_ref, _ = torch_scan(a, b, h0, backend="tree")
        agrees = _close(h, h_ref)

        def step(scan: Callable, a=a, b=b, gh=gh) -> None:
            torch.autograd.grad(scan(a, b), (a, b), gh)

        def ours(a_, b_, h0=h0):
            return linear_scan(a_, b_, h0)

        seconds = time_fn(lambda step=step, ours=ours: step(ours), repeats=repeats, device=device)
        moved = 8 * 4 * B * T * N
        row = {"bench": "scan fwd+bwd", "B": B, "T": T, "N": N, "impl": "memrnn triton",
               "agrees": agrees, "ms": seconds * 1e3, "bytes": moved}  # fmt: skip
        for label, bw in bandwidths.items():
            floor = moved / bw if bw else None
            row[f"floor_ms_{label}"] = None if floor is None else floor * 1e3
            row[f"x_floor_{label}"] = None if (floor is None or not agrees) else seconds / floor
        rows.append(row)
        if peer_scan is not None:
            # The peer's layout is (B, N, T) and its lengths powers of two.
            a_t, b_t, gh_t = (x.detach().transpose(1, 2).contiguous() for x in (a, b, gh))
            a_t.requires_grad_()
            b_t.requires_grad_()
            peer_ok = _close(peer_scan(a_t, b_t).transpose(1, 2), h_ref)
            peer_s = time_fn(lambda a_t=a_t, b_t=b_t, gh_t=gh_t: step(peer_scan, a_t, b_t, gh_t),
                             repeats=repeats, device=device)  # fmt: skip
            rows.append({"bench": "scan fwd+bwd", "B": B, "T": T, "N": N,
                         "impl": "accelerated-scan warp", "agrees": peer_ok,
                         "ms": peer_s * 1e3, "bytes": moved})  # fmt: skip
    return rows


def _unit_layers(device: torch.device, D: int):
    """name -> (triton step input builder, torch reference), parameters at the width D."""
    from memrnn.units.lru_native import lru_layer_torch
    from memrnn.units.mingru_native import mingru_layer_torch

    from memrnn.ops.lru.triton import lru_layer
    from memrnn.ops.mingru.triton import mingru_layer
    from memrnn.ops.mru.triton import mru_layer
    from memrnn.units.mru import _mru_recurrence

    def param(*shape, scale=None):
        scale = 1 / math.sqrt(shape[-1]) if scale is None else scale
        return (torch.randn(*shape, device=device) * scale).requires_grad_()

    def mru_torch(x, w_in, b_in, h0, w_out, b_out, eps):
        p = F.linear(x, w_in, b_in)
        h, rate = _mru_recurrence(
            p[..., :D], p[..., D:], h0, eps, "atan", 1.0, "tree", beta_abs=True
        )
        return F.linear(h, w_out, b_out), h[:, -1], rate

    mru_params = [param(2 * D, D), param(2 * D, scale=0.1), param(D, D), param(D, scale=0.1)]
    radius = 0.9 + 0.09 * torch.rand(D, device=device)
    angle = 2 * math.pi * torch.rand(D, device=device)
    lam = torch.stack([radius * angle.cos(), radius * angle.sin()]).requires_grad_()
    gamma = torch.sqrt(1 - radius**2).requires_grad_()
    lru_params = [param(2 * D, D), lam, gamma, param(D, 2 * D), param(D, scale=1.0)]
    mingru_params = [param(2 * D, D), param(2 * D, scale=0.1)]

    def mru(eps):
        def fast(x, h0):
            w_in, b_in, w_out, b_out = mru_params
            return mru_layer(x, w_in, b_in, h0, w_out, b_out, eps, "atan", 1.0)

        def ref(x, h0):
            w_in, b_in, w_out, b_out = mru_params
            return mru_torch(x, w_in, b_in, h0, w_out, b_out, eps)

        return fast, ref, lambda B: torch.ones(B, D, device=device), mru_params

    def lru_fast(x, h0):
        w_in, lam_, gamma_, w_out, d = lru_params
        return lru_layer(x, w_in, lam_, gamma_, h0, w_out, d)

    def lru_ref(x, h0):
        w_in, lam_, gamma_, w_out, d = lru_params
        return lru_layer_torch(x, w_in, lam_, gamma_, h0, w_out, d)

    return {
        "bmru": mru(0.0),
        "cmru": mru(1.0),
        "mingru": (
            lambda x, h0: mingru_layer(x, *mingru_params, h0),
            lambda x, h0: mingru_layer_torch(x, *mingru_params, h0),
            lambda B: torch.zeros(B, D, device=device),
            mingru_params,
        ),
        "lru": (lru_fast, lru_ref, lambda B: torch.zeros(B, 2 * D, device=device), lru_params),
    }


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def unit_rows(device: torch.device, repeats: int):
    B, T, D = UNIT_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, D, device=device, generator=gen).requires_grad_()
    gru = torch.nn.GRU(D, D, batch_first=True).to(device)

    def gru_step() -> None:
        y, _ = gru(x)
        (y**2).sum().backward()

    gru_s = time_fn(gru_step, repeats=repeats, device=device)
    rows = [{"bench": "train step", "B": B, "T": T, "N": D, "impl": "torch.nn.GRU (cuDNN)",
             "agrees": True, "ms": gru_s * 1e3}]  # fmt: skip
    for name, (fast, ref, init, params) in _unit_layers(device, D).items():
        x_short = x[:, :300].detach()
        h0 = init(B)
        agrees = _close(_first(fast(x_short, h0)), _first(ref(x_short, h0)))

        def step(fast=fast, h0=h0, params=params) -> None:
            y = _first(fast(x, h0))
            grads = torch.autograd.grad((y**2).sum(), [x, *params])
            del grads

        seconds = time_fn(step, repeats=repeats, device=device)
        rows.append({"bench": "train step", "B": B, "T": T, "N": D, "impl": f"memrnn {name}",
                     "agrees": agrees, "ms": seconds * 1e3,
                     "x_vs_gru": gru_s / seconds if agrees else None})  # fmt: skip
    try:
        from minGRU_pytorch import minGRU
    except ImportError:
        return rows
    peer = minGRU(D).to(device)

    def peer_step() -> None:
        (peer(x) ** 2).sum().backward()

    peer_s = time_fn(peer_step, repeats=repeats, device=device)
    rows.append({"bench": "train step", "B": B, "T": T, "N": D, "impl": "mingru-pytorch minGRU",
                 "agrees": None, "ms": peer_s * 1e3, "x_vs_gru": gru_s / peer_s})  # fmt: skip
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="a CUDA device (cuda, cuda:1, ...)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        print(
            f"benchmarks.gpu: needs a CUDA device, got --device {args.device} "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()})",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.repeats < 1:
        print(f"benchmarks.gpu: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        raise SystemExit(2)
    import triton

    torch.cuda.set_device(device)
    info = machine_info()
    gpu = torch.cuda.get_device_name(device)
    info.update(gpu=gpu, triton=triton.__version__)
    print_header("Triton kernels on CUDA", info)
    bandwidths = {
        "datasheet": datasheet_bandwidth(gpu),
        "copy": copy_bandwidth(device, args.repeats),
    }
    print(f"# bandwidth GB/s: datasheet {bandwidths['datasheet']}, copy {bandwidths['copy']:.4g}")
    rows = scan_rows(device, args.repeats, bandwidths) + unit_rows(device, args.repeats)
    for row in rows:
        row["gpu"] = gpu
    columns = ["bench", "B", "T", "N", "impl", "agrees", "ms", "x_floor_copy", "x_vs_gru"]
    print(format_table(rows, columns))
    csv_path, _ = write_results(f"gpu_{_slug(gpu)}", rows, info, args.out)
    print(f"# wrote {csv_path}")


if __name__ == "__main__":
    main()
