import pytest
import torch

from memrnn.scan import linear_scan
from memrnn.units import mingru_native
from memrnn.units.mingru import MinGRU

needs_numba = pytest.mark.skipif(not mingru_native.AVAILABLE, reason="needs numba")


def _torch_recurrence(p, h0):
    """The minGRU recurrence from torch ops and the reference scan: the ground truth here."""
    z_pre, candidate = p.chunk(2, dim=-1)
    z = torch.sigmoid(z_pre)
    h, _ = linear_scan(1 - z, z * candidate, h0, backend="reference")
    return h


def _outputs_and_grads(fn, p, h0, gh):
    h = fn(p, h0)
    return [h.detach(), *torch.autograd.grad((h * gh).sum(), (p, h0))]


@needs_numba
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length", [1, 7, 63, 1000])
def test_fused_equals_torch_ops(dtype, tol, length):
    gen = torch.Generator().manual_seed(length)
    p = (2 * torch.randn(3, length, 10, generator=gen, dtype=dtype)).requires_grad_()
    h0 = torch.randn(3, 5, generator=gen, dtype=dtype).requires_grad_()
    gh = torch.randn(3, length, 5, generator=gen, dtype=dtype)
    want = _outputs_and_grads(_torch_recurrence, p, h0, gh)
    got = _outputs_and_grads(mingru_native.fused_mingru_scan, p, h0, gh)
    for name, x, y in zip(("h", "dp", "dh0"), got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=name)


@needs_numba
def test_threaded_kernels_equal_serial(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(4, 30, 140, generator=gen, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(4, 70, generator=gen, dtype=torch.float64).requires_grad_()
    gh = torch.randn(4, 30, 70, generator=gen, dtype=torch.float64)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(mingru_native, "PARALLEL_MIN_ELEMENTS", threshold)
        results.append(_outputs_and_grads(mingru_native.fused_mingru_scan, p, h0, gh))
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("output_size", [None, 3])
def test_unit_without_the_fused_kernel_gives_the_same_results(monkeypatch, output_size):
    torch.manual_seed(0)
    unit = MinGRU(4, 6, output_size=output_size).double()
    x = torch.randn(2, 40, 4, dtype=torch.float64)
    results = []
    for available in (True, False):
        monkeypatch.setattr(mingru_native, "AVAILABLE", available and mingru_native.AVAILABLE)
        unit.zero_grad(set_to_none=True)
        y, state = unit(x)
        y.square().sum().backward()
        results.append([y.detach(), state.h.detach(), *(p.grad.clone() for p in unit.parameters())])
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


def test_supports():
    p = torch.randn(2, 3, 8)
    assert mingru_native.supports(p) == mingru_native.AVAILABLE
    assert not mingru_native.supports(p.to(torch.bfloat16))
