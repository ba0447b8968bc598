"""minGRU layer kernels: compiled path == torch path (outputs and every gradient)."""

import pytest
import torch

from memrnn.ops import _cpu as jit
from memrnn.ops import dispatch
from memrnn.ops.mingru import mingru_layer
from memrnn.ops.mingru import numba as mingru_native
from memrnn.ops.mingru.torch import mingru_layer as mingru_layer_torch
from memrnn.units.mingru import MinGRU

F64 = torch.float64
needs_numba = pytest.mark.skipif(not mingru_native.AVAILABLE, reason="needs numba")
TOLERANCE = {torch.float32: 1e-5, F64: 1e-10}


def _arguments(B, T, D, H, dtype, with_h0=True, bias=True, seed=0):
    """(x, weight, bias, h0) of a minGRU layer, each requiring gradients where it exists
    (h0 only when `with_h0`; otherwise zeros, as `init_state` gives)."""
    g = torch.Generator().manual_seed(seed)
    args = [
        torch.randn(B, T, D, generator=g, dtype=F64),
        2 * torch.randn(2 * H, D, generator=g, dtype=F64) / D**0.5,
        torch.randn(2 * H, generator=g, dtype=F64) if bias else None,
        torch.randn(B, H, generator=g, dtype=F64) if with_h0 else torch.zeros(B, H),
    ]
    args = [None if a is None else a.to(dtype) for a in args]
    for i, a in enumerate(args):
        if a is not None and (i != 3 or with_h0):
            a.requires_grad_()
    return args


def _reference(x, weight, bias, h0):
    return dispatch.implementation("mingru", "naive", "mingru_layer")(x, weight, bias, h0)


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_backend_equals_naive(compare_to_naive, backend, dtype, with_h0, T):
    args = _arguments(3, T, 6, 5, dtype, with_h0)
    compare_to_naive("mingru", "mingru_layer", backend, args, dtype)


@needs_numba
def test_numba_equals_torch_over_a_long_sequence(agree):
    args = _arguments(3, 1000, 6, 5, F64)
    agree(mingru_native.mingru_layer, mingru_layer_torch, args, TOLERANCE[F64])


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rows", [1, 5, 16, 64])
def test_chunks_across_batch_rows(monkeypatch, agree, dtype, rows):
    # Chunks of 5 and 64 rows start and end inside batch rows of 16 steps and span several;
    # 200 steps per batch row cross the kernel's blocks of summed rows.
    monkeypatch.setattr(mingru_native, "CHUNK_ROWS", rows)
    for T in (16, 200):
        args = _arguments(5, T, 4, 3, dtype)
        agree(mingru_layer, _reference, args, TOLERANCE[dtype])


@needs_numba
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_float64(bias):
    args = _arguments(2, 5, 3, 4, F64, bias=bias)
    assert torch.autograd.gradcheck(mingru_layer, args)


@needs_numba
def test_non_contiguous_input_and_broadcast_output_gradient():
    args = _arguments(3, 7, 4, 3, F64)
    x = args[0].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not x.is_contiguous()
    args = [x, *args[1:]]
    # h.sum() sends an expanded, stride-0 gradient back.
    got = torch.autograd.grad(mingru_layer(*args).sum(), args)
    want = torch.autograd.grad(_reference(*args).sum(), args)
    for g, g_ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@needs_numba
def test_gradients_only_where_asked():
    x, weight, bias, h0 = _arguments(2, 9, 3, 4, F64)
    x = x.detach()  # data: no gradient of the input is computed
    h = mingru_layer(x, weight, bias, h0)
    gw, gh0 = torch.autograd.grad(h.sum(), (weight, h0))
    gw_ref, gh0_ref = torch.autograd.grad(_reference(x, weight, bias, h0).sum(), (weight, h0))
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gh0, gh0_ref, rtol=1e-10, atol=1e-10)


@needs_numba
@pytest.mark.parametrize("rows", [5, 2048])
def test_no_grad_forward_matches(monkeypatch, rows):
    # Without a backward pass coming, p is kept one chunk at a time.
    monkeypatch.setattr(mingru_native, "CHUNK_ROWS", rows)
    args = [a.detach() for a in _arguments(2, 11, 3, 4, F64)]
    with torch.no_grad():
        h = mingru_layer(*args)
    torch.testing.assert_close(h, _reference(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("output_size", [None, 3])
def test_unit_without_numba_uses_the_torch_path(monkeypatch, output_size):
    torch.manual_seed(0)
    unit = MinGRU(4, 6, output_size=output_size).double()
    x = torch.randn(2, 40, 4, dtype=F64)
    results = []
    for available in (True, False):
        if not available:

            def no_kernel(*args):
                raise AssertionError("the compiled kernel ran although numba is unavailable")

            monkeypatch.setattr(mingru_native._MinGRULayer, "apply", no_kernel)
        monkeypatch.setattr(mingru_native, "AVAILABLE", available and mingru_native.AVAILABLE)
        unit.zero_grad(set_to_none=True)
        y, state = unit(x)
        y.square().sum().backward()
        results.append([y.detach(), state.h.detach(), *(p.grad.clone() for p in unit.parameters())])
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


def test_auto_uses_torch_off_cpu_or_in_other_dtypes():
    expected = "numba" if mingru_native.AVAILABLE else "torch"
    assert dispatch.resolve("mingru", "auto", torch.device("cpu"), torch.float32) == expected
    assert dispatch.resolve("mingru", "auto", torch.device("meta"), torch.float32) == "torch"
    assert dispatch.resolve("mingru", "auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.parametrize(
    ("available", "tensor", "match"),
    [
        (False, torch.zeros(1, 2, 2), "needs numba"),
        (True, torch.zeros(1, 2, 2, dtype=torch.float16), "does not support dtype"),
        (True, torch.zeros(1, 2, 2, device="meta"), "runs on CPU tensors"),
    ],
)
def test_native_forward_errors(monkeypatch, available, tensor, match):
    monkeypatch.setattr(mingru_native, "AVAILABLE", available)
    weight = torch.zeros(2, 2, dtype=tensor.dtype, device=tensor.device)
    with pytest.raises(RuntimeError, match=match):
        mingru_native.mingru_layer(tensor, weight, None, tensor[:, 0, :1])


@needs_numba
@pytest.mark.parametrize("rows", [7, 64])
def test_threaded_kernels_equal_serial(monkeypatch, assert_agree, outputs_and_gradients, rows):
    # Chunks of 7 rows hold 1-2 batch row segments (channels split across threads); chunks
    # of 64 rows hold several segments. Threaded and serial runs give the same bits.
    monkeypatch.setattr(mingru_native, "CHUNK_ROWS", rows)
    args = _arguments(4, 30, 5, 70, F64)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(mingru_native, "PARALLEL_MIN_ELEMENTS", threshold)
        results.append(outputs_and_gradients(mingru_layer, args))
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)
    assert_agree(results[0], outputs_and_gradients(_reference, args), TOLERANCE[F64])


@needs_numba
def test_split_gives_threads_segments_or_channel_slices(monkeypatch):
    monkeypatch.setattr(jit.numba, "get_num_threads", lambda: 2)
    least = mingru_native.PARALLEL_MIN_ELEMENTS
    assert jit.row_split(8, 0, 1024, 128, least) == (False, 128)  # too small to thread
    assert jit.row_split(2048, 0, 1024, 128, least) == (True, 128)  # 2 segments: 1 each
    assert jit.row_split(2048, 0, 256, 128, least) == (True, 128)  # 8 segments
    assert jit.row_split(2048, 2048, 4096, 128, least) == (True, 64)  # inside 1 segment


@needs_numba
def test_no_grad_call_keeps_no_buffers_for_a_backward_pass(monkeypatch):
    # Parameters that require gradients, called under no_grad: nothing is kept for a backward
    # pass that cannot come (only the output is allocated through the output cache).
    calls = []
    real = mingru_native.empty
    monkeypatch.setattr(mingru_native, "empty", lambda *a: calls.append(a) or real(*a))
    args = _arguments(2, 11, 3, 4, F64, with_h0=True)
    with torch.no_grad():
        mingru_layer(*args)
    assert len(calls) == 1
    calls.clear()
    mingru_layer(*args)
    assert len(calls) == 2
