"""The chunked Triton scan against the plain-loop reference: forward and gradients (a, b, h0),
real and complex dtypes, broadcast decays, reverse, odd lengths, several chunks and channel
blocks. Without a GPU the kernels run in Triton's interpreter (see tests/conftest.py), which
is slow, so the problems are tiny, with chunks of 4 steps and blocks of 8 channels to have
several of each (T = 11: three chunks, the last one partial; N = 10: two blocks)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-10,
    torch.complex64: 1e-5,
    torch.complex128: 1e-10,
    torch.bfloat16: 5e-2,
}


def _problem(dtype, a_shape, B=1, T=11, N=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64
    if dtype.is_complex:
        # |a| < 1: the reference and the kernel then agree to rounding over any length.
        radius = 0.3 + 0.65 * torch.rand(a_shape, generator=gen, dtype=real)
        angle = 6.3 * torch.rand(a_shape, generator=gen, dtype=real)
        a = torch.polar(radius, angle)
        b = torch.complex(*torch.randn(2, B, T, N, generator=gen, dtype=real))
        h0 = torch.complex(*torch.randn(2, B, N, generator=gen, dtype=real))
    else:
        a = torch.rand(a_shape, generator=gen, dtype=real)
        b = torch.randn(B, T, N, generator=gen, dtype=real)
        h0 = torch.randn(B, N, generator=gen, dtype=real)
    return [x.to(dtype).to(DEVICE).requires_grad_() for x in (a, b, h0)]


def _check(triton_reference, dtype, a_shape, reverse, B=1, T=11, N=10):
    from memrnn.ops.scan.triton import linear_scan

    a, b, h0 = _problem(dtype, a_shape, B, T, N)
    h = linear_scan(a, b, h0, reverse, chunk=4, block=8)
    assert h.shape == b.shape and h.dtype == dtype
    gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if dtype.is_complex:
        gh = torch.complex(gh, gh.flip(1))
    grads = torch.autograd.grad(h, (a, b, h0), gh.to(dtype).to(DEVICE))
    # The reference in float64 (complex128) from the same values.
    wide = torch.complex128 if dtype.is_complex else torch.float64
    a2, b2, h02 = (x.detach().to(wide).requires_grad_() for x in (a, b, h0))
    h_ref = triton_reference.scan(a2, b2, h02, reverse)
    ref_grads = torch.autograd.grad(h_ref, (a2, b2, h02), gh.to(wide).to(DEVICE))
    tol = TOL[dtype]
    scale = 1 + float(h_ref.detach().abs().max())
    torch.testing.assert_close(h.to(wide), h_ref, atol=tol * scale, rtol=tol)
    for name, g, r in zip(("a", "b", "h0"), grads, ref_grads, strict=True):
        assert g.shape == r.shape, name
        scale = 1 + float(r.abs().max())
        torch.testing.assert_close(
            g.to(wide), r, atol=tol * scale, rtol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize(
    ("dtype", "a_shape", "reverse"),
    [
        (torch.float32, (1, 11, 10), False),
        (torch.float64, (1, 11, 10), True),
        (torch.complex64, (1, 1, 10), False),
        (torch.bfloat16, (1, 11, 10), False),
    ],
)
def test_scan_matches_reference(triton_kernels, triton_reference, dtype, a_shape, reverse) -> None:
    _check(triton_reference, dtype, a_shape, reverse)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "a_shape", "reverse"),
    [
        (torch.float32, (2, 1, 10), True),
        (torch.float64, (1, 11, 10), False),
        (torch.complex128, (2, 11, 10), True),
        (torch.complex64, (1, 11, 10), True),
        (torch.float64, (1, 1, 10), True),
    ],
)
def test_scan_matches_reference_more_layouts(
    triton_kernels, triton_reference, dtype, a_shape, reverse
) -> None:
    _check(triton_reference, dtype, a_shape, reverse, B=2)


def test_scan_single_step_and_batch_shared_decay(triton_kernels, triton_reference) -> None:
    # T = 1 (one chunk, mostly past the end) with a decay shared over the batch.
    _check(triton_reference, torch.float64, (1, 1, 5), False, B=3, T=1, N=5)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (((1, 4, 3), (2, 4, 3), (2, 3)), None, None),
        (((2, 4, 3), (2, 4), (2, 3)), ValueError, r"`b` must be \(B, T, N\)"),
        (((3, 4, 3), (2, 4, 3), (2, 3)), ValueError, r"`a` has shape \(3, 4, 3\)"),
        (((2, 4, 3), (2, 4, 3), (2, 4)), ValueError, r"`h0` has shape \(2, 4\)"),
        (((2, 4, 3), (2, 0, 3), (2, 3)), ValueError, "T >= 1"),
    ],
)
def test_scan_rejects_bad_shapes(args, error, match) -> None:
    from memrnn.ops.scan.triton import _validate

    a, b, h0 = (torch.zeros(s) for s in args)
    if error is None:
        _validate(a, b, h0)
    else:
        with pytest.raises(error, match=match):
            _validate(a, b, h0)


def test_scan_rejects_bad_dtypes_and_options() -> None:
    from memrnn.ops.scan.triton import linear_scan

    a, b, h0 = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 3)
    with pytest.raises(TypeError, match="`a` has dtype torch.float64"):
        linear_scan(a.double(), b, h0)
    with pytest.raises(TypeError, match="`b` has dtype torch.int64"):
        linear_scan(a.long(), b.long(), h0.long())
    with pytest.raises(TypeError, match="`h0` must be a torch.Tensor"):
        linear_scan(a, b, None)
    with pytest.raises(ValueError, match="`chunk` must be a power of two"):
        linear_scan(a, b, h0, chunk=6)
