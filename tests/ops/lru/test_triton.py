"""The LRU layer on the Triton scan (complex state as real/imaginary planes, λ and γ applied in
the kernel) against torch's complex ops around the reference scan: y, h_T and the gradients of
every argument. Tiny problems: without a GPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _args(dtype, B=1, T=11, H=3, N=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    radius = 0.5 + 0.49 * torch.rand(N, generator=gen, dtype=f64)
    angle = 2 * math.pi * torch.rand(N, generator=gen, dtype=f64)
    args = [
        torch.randn(B, T, H, generator=gen, dtype=f64),
        torch.randn(2 * N, H, generator=gen, dtype=f64),
        torch.stack([radius * angle.cos(), radius * angle.sin()]),
        torch.sqrt(1 - radius**2),
        torch.randn(B, 2 * N, generator=gen, dtype=f64),
        torch.randn(H, 2 * N, generator=gen, dtype=f64),
        torch.randn(H, generator=gen, dtype=f64),
    ]
    return [x.to(dtype).to(DEVICE).requires_grad_() for x in args]


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float64, 1e-10), pytest.param(torch.float32, 1e-5, marks=pytest.mark.slow)],
)
def test_lru_layer_matches_reference(triton_kernels, triton_reference, dtype, tol) -> None:
    from memrnn.ops.lru.triton import lru_layer

    args = _args(dtype)
    y, h_last = lru_layer(*args, chunk=4, block=8)
    weights = torch.linspace(-1, 1, h_last.shape[-1], dtype=dtype, device=DEVICE)
    loss = (y**2).sum() + (h_last * weights).sum()
    grads = torch.autograd.grad(loss, args)
    wide = [x.detach().double().requires_grad_() for x in args]
    y_ref, h_ref = triton_reference.lru_layer(*wide)
    ref_grads = torch.autograd.grad((y_ref**2).sum() + (h_ref * weights.double()).sum(), wide)
    torch.testing.assert_close(y.double(), y_ref.detach(), atol=tol * 10, rtol=tol)
    torch.testing.assert_close(h_last.double(), h_ref.detach(), atol=tol, rtol=tol)
    names = ("u", "w_in", "lam", "gamma", "h0", "w_out", "d")
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        scale = 1 + float(want.abs().max())
        torch.testing.assert_close(
            got.double(), want, atol=tol * scale, rtol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lam": torch.zeros(10)}, r"`lam` has shape \(10,\)"),
        ({"gamma": torch.zeros(3)}, r"`gamma` has shape \(3,\)"),
        ({"h0": torch.zeros(1, 10)}, r"`h0` has shape \(1, 10\)"),
        ({"w_in": torch.zeros(20, 4)}, r"`w_in` has shape \(20, 4\)"),
    ],
)
def test_lru_layer_rejects_bad_shapes(change, match) -> None:
    from memrnn.ops.lru.triton import lru_layer

    names = ("u", "w_in", "lam", "gamma", "h0", "w_out", "d")
    kwargs = dict(zip(names, (x.detach() for x in _args(torch.float32)), strict=True))
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        lru_layer(**kwargs)
