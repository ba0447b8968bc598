"""The causal convolution op: FFT == direct == the naive loop, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from memrnn.ops import dispatch
from memrnn.ops.lti import DIRECT_FFT_CROSSOVER, causal_conv, choose_method
from memrnn.ops.lti.torch import direct_causal_conv, fft_causal_conv

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
CONVS = {"fft": fft_causal_conv, "direct": direct_causal_conv}


def loop_causal_conv(u: Tensor, h: Tensor) -> Tensor:
    return dispatch.implementation("lti", "naive", "causal_conv")(u, h)


def _draw(steps: int, taps: int, dtype: torch.dtype, vector: bool = False) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(steps * 1000 + taps)
    u = torch.randn(2, steps, 3, generator=gen, dtype=torch.float64).to(dtype)
    shape = (taps,) if vector else (taps, 5)
    h = (torch.randn(shape, generator=gen, dtype=torch.float64) / taps**0.5).to(dtype)
    return u, h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("steps", "taps"), [(1, 1), (7, 7), (31, 31), (63, 20), (64, 64), (17, 40)]
)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution_matches_the_loop(name: str, steps: int, taps: int, dtype: torch.dtype) -> None:
    u, h = _draw(steps, taps, dtype)
    got = CONVS[name](u, h)
    want = loop_causal_conv(u.double(), h.double())
    assert got.shape == (2, steps, 3, 5) and got.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_a_vector_impulse_response_is_shared_by_all_channels(name: str) -> None:
    u, h = _draw(13, 13, torch.float64, vector=True)
    got = CONVS[name](u, h)
    assert got.shape == (2, 13, 3)
    torch.testing.assert_close(got, loop_causal_conv(u, h), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_a_mixing_kernel_sums_the_channels(name: str, channels: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(channels)
    u = torch.randn(2, 37, channels, generator=gen, dtype=torch.float64)
    h = torch.randn(37, channels, 4, generator=gen, dtype=torch.float64) / 6
    want = sum(loop_causal_conv(u[..., c : c + 1], h[:, c])[:, :, 0] for c in range(channels))
    got = CONVS[name](u.to(dtype), h.to(dtype))
    assert got.shape == (2, 37, 4)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fft_and_direct_gradients_agree(dtype: torch.dtype) -> None:
    u, h = _draw(101, 101, dtype)
    grad_out = torch.randn(2, 101, 3, 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = []
    for conv in (fft_causal_conv, direct_causal_conv):
        uu, hh = u.clone().requires_grad_(), h.clone().requires_grad_()
        conv(uu, hh).backward(grad_out)
        grads.append((uu.grad, hh.grad))
    tol = TOLERANCE[dtype]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def test_gradcheck_in_float64() -> None:
    u, h = _draw(9, 6, torch.float64)
    u, h = u[:1, :, :2].clone().requires_grad_(), h[:, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(fft_causal_conv, (u, h))
    assert torch.autograd.gradcheck(direct_causal_conv, (u, h))


@pytest.mark.parametrize("name", sorted(CONVS))
def test_bad_shapes_and_dtypes_are_refused(name: str) -> None:
    conv = CONVS[name]
    with pytest.raises(ValueError, match=r"`u` must have shape \(B, T, C\)"):
        conv(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"`h` must have shape \(L,\), \(L, N\) or \(L, C, N\)"):
        conv(torch.zeros(1, 4, 3), torch.zeros(4, 2, 2, 2))
    with pytest.raises(ValueError, match="needs C = 3 channels"):
        conv(torch.zeros(1, 4, 3), torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="L >= 1"):
        conv(torch.zeros(1, 4, 3), torch.zeros(0, 2))
    with pytest.raises(TypeError, match="share dtype and device"):
        conv(torch.zeros(1, 4, 3), torch.zeros(4, 2, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("mixing", [False, True])
def test_backend_equals_naive(compare_to_naive, backend, method, dtype, T, mixing):
    gen = torch.Generator().manual_seed(T)
    u = torch.randn(2, T, 3, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    shape = (T, 3, 4) if mixing else (T, 4)
    h = (torch.randn(shape, generator=gen, dtype=torch.float64) / T**0.5).to(dtype)
    compare_to_naive("lti", "causal_conv", backend, [u, h.requires_grad_(), method], dtype)


def test_the_op_chooses_its_method_and_checks_its_arguments() -> None:
    assert choose_method(1) == "direct" and choose_method(DIRECT_FFT_CROSSOVER - 1) == "direct"
    assert (
        choose_method(DIRECT_FFT_CROSSOVER) == "fft" and choose_method(100, crossover=50) == "fft"
    )
    u, h = _draw(9, 6, torch.float64)
    torch.testing.assert_close(causal_conv(u, h), direct_causal_conv(u, h), rtol=0, atol=0)
    torch.testing.assert_close(
        causal_conv(u, h, backend="naive"), fft_causal_conv(u, h), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="unknown method 'raw'; expected one of"):
        causal_conv(u, h, method="raw")
    with pytest.raises(ValueError, match=r"causal_conv: `u` must have shape \(B, T, C\)"):
        causal_conv(u[0], h)
    with pytest.raises(RuntimeError, match="'numba' backend of op 'lti' is not available"):
        causal_conv(u, h, backend="numba")
