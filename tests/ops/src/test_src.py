"""The SRC op: every backend == the naive loop of `src_step`, and its compiled kernels."""

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.ops.src import SRCConstants, resolve_backend, src_loop
from memrnn.ops.src import numba as src_native

F64 = torch.float64
needs_numba = pytest.mark.skipif(not src_native.AVAILABLE, reason="needs numba")


def _arguments(B, T, N, dtype, seed=0):
    """(u, i0, h0, hs0, bias) of a spiking problem, each requiring gradients: inputs that make
    the neurons spike, a state away from rest so that the gradients see the whole hs gate."""
    gen = torch.Generator().manual_seed(seed)
    args = [
        3.0 * torch.rand(B, T, N, generator=gen, dtype=F64),
        0.5 * torch.randn(B, N, generator=gen, dtype=F64),
        0.5 * torch.rand(B, N, generator=gen, dtype=F64) - 0.9,
        0.5 * torch.rand(B, N, generator=gen, dtype=F64) - 0.9,
        torch.full((N,), -5.0, dtype=F64),
    ]
    return [a.to(dtype).requires_grad_() for a in args]


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("detach_recurrence", [False, True])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_backend_equals_naive(
    compare_to_naive, backend, dtype, straight_through, detach_recurrence, T
):
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, straight_through, detach_recurrence)
    args = _arguments(3, T, 9, dtype)
    if T == 63:
        y, *_ = dispatch.implementation("src", "naive", "src_loop")(*args, c)
        assert y.max() > 0.5
    compare_to_naive("src", "src_loop", backend, [*args, c], dtype)


@needs_numba
def test_numba_gradcheck():
    # Default options only: straight-through and detached gradients are not the true gradient
    # by design; test_backend_equals_naive checks them against the naive loop instead.
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    args = _arguments(2, 12, 3, F64)
    y, *_ = src_native.src_loop(*args, c)
    assert y.max() > 0.5
    assert torch.autograd.gradcheck(lambda *a: src_native.src_loop(*a, c), args, atol=1e-7)


@needs_numba
def test_numba_kernel_threaded_equals_serial(monkeypatch):
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    args = _arguments(9, 40, 70, F64, seed=2)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(src_native, "PARALLEL_MIN_ELEMENTS", threshold)
        outputs = src_native.src_loop(*args, c)
        loss = sum((out * (k + 1)).sum() for k, out in enumerate(outputs))
        results.append([*outputs, *torch.autograd.grad(loss, args)])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


@needs_numba
def test_numba_without_grad_matches_with_grad():
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    args = _arguments(2, 50, 8, torch.float32, seed=3)
    with_grad = src_native.src_loop(*args, c)
    with torch.no_grad():
        without = src_native.src_loop(*args, c)
    assert with_grad[0].requires_grad and not without[0].requires_grad
    assert all(torch.equal(a.detach(), b) for a, b in zip(with_grad, without, strict=True))


def test_auto_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(cpu, torch.bfloat16) == "torch"
    expected = "numba" if src_native.AVAILABLE else "torch"
    assert resolve_backend(cpu, F64) == expected
    # A kernel that fails its probe (here: numba missing at run time) is not used.
    dispatch.reset_probes()
    monkeypatch.setattr(src_native, "_check", lambda t: (_ for _ in ()).throw(RuntimeError("x")))
    try:
        assert resolve_backend(cpu, torch.float32) == "torch"
        c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
        y, *_ = src_loop(*_arguments(2, 5, 3, torch.float32), c)
        assert y.shape == (2, 5, 3)
    finally:
        dispatch.reset_probes()


def test_bad_backend():
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    with pytest.raises(ValueError, match="unknown backend 'x'; expected one of"):
        src_loop(*_arguments(1, 2, 3, F64), c, backend="x")
    with pytest.raises(RuntimeError, match="'triton' backend of op 'src'"):
        src_loop(*_arguments(1, 2, 3, F64), c, backend="triton")
