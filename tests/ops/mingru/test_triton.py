"""The minGRU layer on the Triton scan against torch ops around the reference scan: h and the
gradients of x, weight, bias and h0. Tiny problems: without a GPU the kernels run in Triton's
interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _args(dtype, B=1, T=11, D=3, H=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, T, D), (2 * H, D), (2 * H,), (B, H)]
    args = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    return [x.to(dtype).to(DEVICE).requires_grad_() for x in args]


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float64, 1e-10), pytest.param(torch.float32, 1e-5, marks=pytest.mark.slow)],
)
def test_mingru_layer_matches_reference(triton_kernels, triton_reference, dtype, tol) -> None:
    from memrnn.ops.mingru.triton import mingru_layer

    args = _args(dtype)
    h = mingru_layer(*args, chunk=4, block=8)
    gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(h, args, gh.to(dtype).to(DEVICE))
    wide = [x.detach().double().requires_grad_() for x in args]
    h_ref = triton_reference.mingru_layer(*wide)
    ref_grads = torch.autograd.grad(h_ref, wide, gh.to(DEVICE))
    assert h.dtype == dtype
    torch.testing.assert_close(h.double(), h_ref.detach(), atol=tol, rtol=tol)
    for name, got, want in zip(("x", "weight", "bias", "h0"), grads, ref_grads, strict=True):
        torch.testing.assert_close(
            got.double(), want, atol=tol * 10, rtol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.slow
def test_mingru_layer_reads_bfloat16(triton_kernels, triton_reference) -> None:
    from memrnn.ops.mingru.triton import mingru_layer

    args = _args(torch.bfloat16)
    h = mingru_layer(*args, chunk=4, block=8)
    h_ref = triton_reference.mingru_layer(*(x.detach().double() for x in args))
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.double(), h_ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"weight": torch.zeros(5, 3)}, r"`weight` has shape \(5, 3\)"),
        ({"h0": torch.zeros(1, 4)}, r"`h0` has shape \(1, 4\)"),
        ({"x": torch.zeros(11, 3)}, r"`x` must be \(B, T, D\)"),
    ],
)
def test_mingru_layer_rejects_bad_shapes(change, match) -> None:
    from memrnn.ops.mingru.triton import mingru_layer

    kwargs = dict(zip(("x", "weight", "bias", "h0"), _args(torch.float32), strict=True))
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        mingru_layer(**kwargs)
