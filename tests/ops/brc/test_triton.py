"""The BRC and nBRC Triton kernels (sequential, state in registers) against the compiled CPU
kernels of `memrnn.units.brc_native`: h and the gradients of drive, h0 and weight. Tiny
problems: without a GPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dense", [False, True])
def test_bistable_layer_matches_cpu_kernel(triton_kernels, dense) -> None:
    from memrnn.ops.brc.naive import bistable_layer as cpu_layer
    from memrnn.ops.brc.triton import bistable_layer

    gen = torch.Generator().manual_seed(0)
    B, T, H = 2, 9, 5
    drive = torch.randn(B, T, 3 * H, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    shape = (2 * H, H) if dense else (2, H)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64) * (0.5 if dense else 1.0)
    args = [x.requires_grad_() for x in (drive, h0, weight)]
    h = bistable_layer(*(x.to(DEVICE) for x in args), dense)
    grads = torch.autograd.grad((h**2).sum(), args)
    h_ref = cpu_layer(*args, dense)
    ref_grads = torch.autograd.grad((h_ref**2).sum(), args)
    torch.testing.assert_close(h.cpu(), h_ref, atol=1e-10, rtol=1e-10)
    for name, got, want in zip(("drive", "h0", "weight"), grads, ref_grads, strict=True):
        torch.testing.assert_close(
            got, want, atol=1e-10, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize(
    ("shapes", "dense", "match"),
    [
        (((2, 9, 14), (2, 4), (2, 4)), False, r"drive: expected shape \(B, T, 3H\)"),
        (((2, 9, 15), (2, 4), (2, 5)), False, r"h0: expected shape \(2, 5\)"),
        (((2, 9, 15), (2, 5), (2, 5)), True, r"weight: expected shape \(10, 5\)"),
    ],
)
def test_bistable_layer_rejects_bad_shapes(shapes, dense, match) -> None:
    from memrnn.ops.brc.triton import bistable_layer

    with pytest.raises(ValueError, match=match):
        bistable_layer(*(torch.zeros(s) for s in shapes), dense)
