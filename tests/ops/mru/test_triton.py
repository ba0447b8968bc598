"""The fused MRU layer on the Triton scan against torch ops around the reference scan: outputs
(y, h_T, write rate) and the gradients of every argument, for each surrogate, ε in [0, 1] and
bfloat16 inputs. Tiny problems: without a GPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _args(dtype, B=1, T=11, D=3, N=10, O=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, T, D), (2 * N, D), (2 * N,), (B, N), (O, N), (O,)]
    args = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    args[3] = args[3].sign()
    return [x.to(dtype).to(DEVICE).requires_grad_() for x in args]


def _loss(y, h_last, rate):
    weights = torch.linspace(-1, 1, h_last.shape[-1], dtype=h_last.dtype, device=h_last.device)
    return (y.float() ** 2).sum() + (h_last * weights).sum() + 3 * rate


def _check(triton_reference, dtype, epsilon, surrogate, tol):
    from memrnn.ops.mru.triton import mru_layer

    args = _args(dtype)
    out = mru_layer(*args, epsilon, surrogate, 1.5, chunk=4, block=8)
    grads = torch.autograd.grad(_loss(*out), args)
    wide = [x.detach().double().requires_grad_() for x in args]
    ref = triton_reference.mru_layer(*wide, epsilon, surrogate, 1.5)
    ref_grads = torch.autograd.grad(_loss(*ref), wide)
    for name, got, want in zip(("y", "h_T", "rate"), out, ref, strict=True):
        torch.testing.assert_close(
            got.double(), want, atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )
    names = ("x", "w_in", "b_in", "h0", "w_out", "b_out")
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        scale = 1 + float(want.abs().max())
        torch.testing.assert_close(
            got.double(), want, atol=tol * scale, rtol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_mru_layer_matches_reference_bmru_to_cmru(triton_kernels, triton_reference) -> None:
    _check(triton_reference, torch.float64, 0.3, "atan", 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "epsilon", "surrogate", "tol"),
    [
        (torch.float32, 1.0, "triangle", 1e-5),
        (torch.float64, 0.0, "fast-sigmoid", 1e-10),
        (torch.float64, 0.5, "straight-through", 1e-10),
    ],
)
def test_mru_layer_matches_reference_surrogates(
    triton_kernels, triton_reference, dtype, epsilon, surrogate, tol
) -> None:
    _check(triton_reference, dtype, epsilon, surrogate, tol)


@pytest.mark.slow
def test_mru_layer_reads_bfloat16_projections(triton_kernels) -> None:
    from memrnn.ops.mru.triton import mru_layer

    args = _args(torch.bfloat16)
    y, h_last, rate = mru_layer(*args, 0.0, "atan", 1.0, chunk=4, block=8)
    # The state is float32 and, for the BMRU, exactly ±1 whatever the input precision.
    assert y.dtype == torch.bfloat16 and rate.dtype == torch.float32
    assert set(h_last.float().unique().tolist()) <= {-1.0, 1.0}
    grads = torch.autograd.grad(_loss(y, h_last, rate), args)
    assert all(torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"surrogate": "relu"}, ValueError, "unknown surrogate 'relu'"),
        ({"w_in": torch.zeros(5, 3)}, ValueError, r"`w_in` has shape \(5, 3\)"),
        ({"h0": torch.zeros(2, 10)}, ValueError, r"`h0` has shape \(2, 10\)"),
        ({"x": torch.zeros(11, 3)}, ValueError, r"`x` must be \(B, T, D\)"),
        ({"w_out": torch.zeros(2, 4)}, ValueError, r"`w_out` has shape \(2, 4\)"),
    ],
)
def test_mru_layer_rejects_bad_arguments(change, error, match) -> None:
    from memrnn.ops.mru.triton import mru_layer

    names = ("x", "w_in", "b_in", "h0", "w_out", "b_out")
    kwargs = dict(zip(names, (x.detach() for x in _args(torch.float32)), strict=True))
    kwargs.update(epsilon=0.0, surrogate="atan", sharpness=1.0)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        mru_layer(**kwargs)
