"""The LRU op: every backend == the naive loop (outputs, final state, every gradient)."""

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.ops.lru import lru_layer
from memrnn.ops.lru import numba as lru_native
from memrnn.ops.lru.torch import lru_layer as lru_layer_torch
from memrnn.units.lru import LRU, LRUState

F64 = torch.float64
needs_numba = pytest.mark.skipif(not lru_native.AVAILABLE, reason="needs numba")
TOLERANCE = {torch.float32: 1e-5, F64: 1e-10}


def _arguments(B: int, T: int, H: int, N: int, dtype: torch.dtype, with_h0: bool, seed: int = 0):
    """(u, w_in, lam, gamma, h0, w_out, d) of an LRU layer, every one requiring gradients
    (h0 only when `with_h0`; otherwise zeros, as `init_state` gives)."""
    g = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.49 * torch.rand(N, generator=g, dtype=F64)
    phase = 6.28 * torch.rand(N, generator=g, dtype=F64)
    lam = torch.stack([radius * torch.cos(phase), radius * torch.sin(phase)])
    args = [
        torch.randn(B, T, H, generator=g, dtype=F64),
        torch.randn(2 * N, H, generator=g, dtype=F64) / H**0.5,
        lam,
        torch.sqrt(1 - radius**2),
        torch.randn(B, 2 * N, generator=g, dtype=F64) if with_h0 else torch.zeros(B, 2 * N),
        torch.randn(H, 2 * N, generator=g, dtype=F64) / N**0.5,
        torch.randn(H, generator=g, dtype=F64),
    ]
    args = [a.to(dtype) for a in args]
    for i, a in enumerate(args):
        if i != 4 or with_h0:
            a.requires_grad_()
    return args


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_backend_equals_naive(compare_to_naive, backend, dtype, with_h0, T):
    args = _arguments(3, T, 6, 5, dtype, with_h0)
    compare_to_naive("lru", "lru_layer", backend, args, dtype)


@needs_numba
def test_numba_equals_torch_over_a_long_sequence(agree):
    args = _arguments(3, 1000, 6, 5, F64, True)
    agree(lru_native.lru_layer, lru_layer_torch, args, TOLERANCE[F64])


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rows", [1, 5, 16, 64])
def test_chunks_across_batch_rows(monkeypatch, agree, dtype, rows):
    # Chunks of 5 and 64 rows start and end inside batch rows of 16 steps and span several.
    monkeypatch.setattr(lru_native, "CHUNK_ROWS", rows)
    args = _arguments(5, 16, 4, 3, dtype, with_h0=True)
    agree(lru_layer, lru_layer_torch, args, TOLERANCE[dtype])


@needs_numba
def test_non_contiguous_input(agree):
    args = _arguments(3, 7, 4, 3, F64, with_h0=True)
    u = args[0].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not u.is_contiguous()
    args = [u, *args[1:]]
    agree(lru_layer, lru_layer_torch, args, TOLERANCE[F64])


@needs_numba
def test_gradcheck_float64():
    args = _arguments(2, 5, 3, 4, F64, with_h0=True)
    assert torch.autograd.gradcheck(lru_layer, args)


def _partial_gradients(fn, args):
    """Gradients of a loss on the final state only (no output gradient reaches the layer),
    then of y.sum() (an expanded, stride-0 output gradient and no final-state gradient)."""
    from_state = torch.autograd.grad(fn(*args)[1].sum(), args[:5])
    from_output = torch.autograd.grad(fn(*args)[0].sum(), args)
    return from_state + from_output


@needs_numba
def test_unused_outputs_and_broadcast_gradients():
    args = _arguments(2, 9, 3, 4, F64, with_h0=True)
    native = _partial_gradients(lru_layer, args)
    reference = _partial_gradients(lru_layer_torch, args)
    for g, g_ref in zip(native, reference, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@needs_numba
@pytest.mark.parametrize("rows", [5, 2048])
def test_no_grad_forward_matches(monkeypatch, rows):
    # Without a backward pass coming, h is kept one chunk at a time.
    monkeypatch.setattr(lru_native, "CHUNK_ROWS", rows)
    args = [a.detach() for a in _arguments(2, 11, 3, 4, F64, with_h0=True)]
    with torch.no_grad():
        y, h_last = lru_layer(*args)
    y_ref, h_ref = lru_layer_torch(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_last, h_ref, rtol=1e-12, atol=1e-12)


def _unit_results(unit: LRU, x: torch.Tensor, h0: torch.Tensor):
    y, state = unit(x, LRUState(h0))
    loss = y.pow(2).sum() + (state.h * state.h.conj()).real.sum()
    return [y, state.h, *torch.autograd.grad(loss, [x, h0, *unit.parameters()])]


def test_unit_without_numba_uses_the_torch_path(monkeypatch, assert_agree):
    torch.manual_seed(0)
    unit = LRU(3, 6, output_size=4, state_size=5, dtype=F64)
    x = torch.randn(2, 13, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 5, dtype=torch.complex128, requires_grad=True)
    unit.mode = "recurrent"
    expected = _unit_results(unit, x, h0)
    unit.mode = "parallel"
    compiled = _unit_results(unit, x, h0) if lru_native.AVAILABLE else expected

    def no_kernel(*args):
        raise AssertionError("the compiled kernel ran although numba is unavailable")

    monkeypatch.setattr(lru_native, "AVAILABLE", False)
    monkeypatch.setattr(lru_native._LRULayer, "apply", no_kernel)
    fallback = _unit_results(unit, x, h0)
    assert_agree(compiled, expected, TOLERANCE[F64])
    assert_agree(fallback, expected, TOLERANCE[F64])


def test_auto_uses_torch_off_cpu_or_in_other_dtypes():
    assert dispatch.resolve("lru", "auto", torch.device("meta"), torch.float32) == "torch"
    assert dispatch.resolve("lru", "auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.parametrize(
    ("available", "tensor", "match"),
    [
        (False, torch.zeros(1, 2, 2), "needs numba"),
        (True, torch.zeros(1, 2, 2, dtype=torch.float16), "does not support dtype"),
        (True, torch.zeros(1, 2, 2, device="meta"), "runs on CPU tensors"),
    ],
)
def test_native_forward_errors(monkeypatch, available, tensor, match):
    monkeypatch.setattr(lru_native, "AVAILABLE", available)
    lam = torch.zeros(2, 1, dtype=tensor.dtype, device=tensor.device)
    gamma = torch.zeros(1, dtype=tensor.dtype, device=tensor.device)
    weight = torch.zeros(2, 2, dtype=tensor.dtype, device=tensor.device)
    with pytest.raises(RuntimeError, match=match):
        lru_native.lru_layer(tensor, weight, lam, gamma, tensor[:, 0], weight, lam[0])


@needs_numba
def test_no_grad_call_keeps_no_buffers_for_a_backward_pass(monkeypatch):
    # Parameters that require gradients, called under no_grad: nothing is kept for a backward
    # pass that cannot come (only the output is allocated through the output cache).
    calls = []
    real = lru_native.empty
    monkeypatch.setattr(lru_native, "empty", lambda *a: calls.append(a) or real(*a))
    args = _arguments(2, 11, 3, 4, F64, with_h0=True)
    with torch.no_grad():
        lru_layer(*args)
    assert len(calls) == 1
    calls.clear()
    lru_layer(*args)
    assert len(calls) == 2
