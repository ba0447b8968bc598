"""The BRC/nBRC op: every backend == the naive loop (outputs, every gradient); its kernels."""

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.ops.brc import bistable_layer as bistable_op
from memrnn.ops.brc import numba as brc_native
from memrnn.ops.brc.numba import bistable_layer
from memrnn.units import BRC, NBRC

F64 = torch.float64
needs_numba = pytest.mark.skipif(not brc_native.AVAILABLE, reason="needs numba")


def _arguments(B, T, H, dense, dtype, seed=0):
    """(drive, h0, weight) of a bistable layer, all requiring gradients: feedback weights
    large enough that neurons are bistable (a > 1) and c varies."""
    g = torch.Generator().manual_seed(seed)
    drive = torch.randn(B, T, 3 * H, generator=g, dtype=F64)
    h0 = torch.randn(B, H, generator=g, dtype=F64).clamp(-0.9, 0.9)
    shape = (2 * H, H) if dense else (2, H)
    weight = 1.5 * torch.randn(shape, generator=g, dtype=F64) / (H**0.5 if dense else 1)
    return [a.to(dtype).requires_grad_() for a in (drive, h0, weight)]


def _reference(drive, h0, weight, dense):
    return dispatch.implementation("brc", "naive", "bistable_layer")(drive, h0, weight, dense)


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_backend_equals_naive(compare_to_naive, backend, dense, dtype, T):
    args = _arguments(3, T, 6, dense, dtype)
    compare_to_naive("brc", "bistable_layer", backend, [*args, dense], dtype)


@needs_numba
def test_numba_equals_naive_over_a_long_sequence(agree):
    args = _arguments(2, 1000, 6, True, F64)
    agree(bistable_layer, _reference, [*args, True], 1e-10)


@needs_numba
@pytest.mark.parametrize("dense", [False, True])
def test_gradcheck_float64(dense):
    args = _arguments(2, 5, 3, dense, F64)
    assert torch.autograd.gradcheck(lambda d, h, w: bistable_layer(d, h, w, dense), args)


@needs_numba
@pytest.mark.parametrize("dense", [False, True])
def test_threaded_kernels_equal_serial(monkeypatch, outputs_and_gradients, dense):
    args = _arguments(5, 40, 33, dense, F64)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(brc_native, "PARALLEL_MIN_ELEMENTS", threshold)
        results.append(outputs_and_gradients(bistable_layer, [*args, dense]))
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)


@needs_numba
def test_no_grad_call_keeps_one_row_of_gates(monkeypatch):
    calls = []
    real = brc_native.empty
    monkeypatch.setattr(brc_native, "empty", lambda *a: calls.append(a) or real(*a))
    drive, h0, weight = _arguments(2, 30, 4, True, F64)
    with torch.no_grad():
        h = bistable_layer(drive, h0, weight, True)
    assert [shape for shape, _ in calls] == [(2, 30, 4), (2, 1, 12)]
    torch.testing.assert_close(h, _reference(drive, h0, weight, True), rtol=1e-12, atol=1e-12)


@needs_numba
def test_input_without_gradient():
    drive, h0, weight = _arguments(2, 9, 4, False, F64)
    drive, h0 = drive.detach(), h0.detach()
    (g,) = torch.autograd.grad(bistable_layer(drive, h0, weight, False).sum(), weight)
    (g_ref,) = torch.autograd.grad(_reference(drive, h0, weight, False).sum(), weight)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [BRC, NBRC])
def test_unit_backends_agree(cls):
    # "auto" runs the kernels where numba is installed; "naive" is the torch loop of `step`'s
    # update. Both agree on outputs, final state and the gradients of x, h0 and every parameter.
    torch.manual_seed(0)
    unit = cls(4, 6, output_size=3).double()
    x = torch.randn(2, 50, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=F64, requires_grad=True)
    results = []
    for backend in ("auto", "naive"):
        unit.backend = backend
        unit.zero_grad(set_to_none=True)
        y, state = unit(x, unit.init_state(2)._replace(h=h0))
        loss = y.square().sum() + state.h.sum()
        loss.backward()
        results.append([y, state.h, x.grad, h0.grad, *(p.grad for p in unit.parameters())])
        x.grad = h0.grad = None
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_unit_backend_choices(monkeypatch):
    assert "backend='auto'" in repr(BRC(2, 3))
    with pytest.raises(ValueError, match="backend"):
        NBRC(2, 3, backend="fused")
    # "auto" falls back to the loop where the kernels cannot run; "numba" says why not.
    unit = BRC(2, 3, dtype=torch.bfloat16)
    x = torch.randn(1, 4, 2, dtype=torch.bfloat16)
    assert unit(x)[0].shape == (1, 4, 3)
    unit.backend = "numba"
    with pytest.raises(RuntimeError, match="'numba' backend of op 'brc' does not support"):
        unit(x)


def test_bad_arguments(monkeypatch):
    drive, h0 = torch.zeros(2, 3, 6), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"`weight` must have shape \(4, 2\)"):
        bistable_op(drive, h0, torch.zeros(2, 2), True)
    with pytest.raises(ValueError, match=r"`weight` must have shape \(2, 2\)"):
        bistable_op(drive, h0, torch.zeros(4, 2), False)
    with pytest.raises(ValueError, match="unknown backend 'fused'"):
        bistable_op(drive, h0, torch.zeros(2, 2), False, backend="fused")
    with pytest.raises(RuntimeError, match="needs h0 and weight of drive's dtype and device"):
        bistable_layer(drive, h0.double(), torch.zeros(2, 2), False)
    monkeypatch.setattr(brc_native, "AVAILABLE", False)
    with pytest.raises(RuntimeError, match="needs numba"):
        bistable_layer(drive, h0, torch.zeros(2, 2), False)
    with pytest.raises(RuntimeError, match="backend of op 'brc' needs numba"):
        bistable_op(drive, h0, torch.zeros(2, 2), False, backend="numba")
    # "auto" falls back to the naive loop (the op has no batched torch path).
    assert bistable_op(drive, h0, torch.zeros(2, 2), False).shape == (2, 3, 2)
