"""Every scan backend against the reference loop, forward and backward, and every error path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrnn.ops.dispatch import reset_probes as reset_backend_choice
from memrnn.ops.scan import linear_scan, resolve_backend
from memrnn.ops.scan import numba as native_mod

FAST_BACKENDS = ("torch", "numba")
LENGTHS = (1, 2, 7, 63, 64, 1000, 4097)
TOL = {
    torch.float32: 2e-5,
    torch.float64: 1e-10,
    torch.complex64: 2e-5,
    torch.complex128: 1e-10,
}


def _inputs(batch: int, T: int, n: int, dtype: torch.dtype, seed: int = 0, a_shape=None):
    gen = torch.Generator().manual_seed(seed)
    a_shape = a_shape or (batch, T, n)
    if dtype.is_complex:
        real = torch.float32 if dtype == torch.complex64 else torch.float64
        radius = torch.rand(a_shape, generator=gen, dtype=real)
        phase = torch.rand(a_shape, generator=gen, dtype=real) * 6.28
        a = torch.polar(radius, phase)
        b = torch.randn(batch, T, n, generator=gen, dtype=dtype)
        h0 = torch.randn(batch, n, generator=gen, dtype=dtype)
    else:
        # Decays of both signs, |a| <= 1, so that long scans stay bounded.
        a = torch.rand(a_shape, generator=gen, dtype=dtype) * 2 - 1
        b = torch.randn(batch, T, n, generator=gen, dtype=dtype)
        h0 = torch.randn(batch, n, generator=gen, dtype=dtype)
    return a, b, h0


def _run(backend, a, b, h0, reverse=False, weight_seed=1):
    """Scan, then backprop a random linear function of h and of h_last; returns all results."""
    a = a.clone().requires_grad_()
    b = b.clone().requires_grad_()
    h0 = None if h0 is None else h0.clone().requires_grad_()
    h, h_last = linear_scan(a, b, h0, reverse=reverse, backend=backend)
    gen = torch.Generator().manual_seed(weight_seed)
    w = torch.randn(h.shape, generator=gen, dtype=h.dtype)
    w_last = torch.randn(h_last.shape, generator=gen, dtype=h.dtype)
    loss = (h * w).real.sum() + (h_last * w_last).real.sum()
    inputs = [a, b] + ([] if h0 is None else [h0])
    grads = torch.autograd.grad(loss, inputs)
    return (h.detach(), h_last.detach(), *grads)


def _assert_close(got, expected, tol):
    for g, e in zip(got, expected, strict=True):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_h0", [True, False])
def test_backend_matches_reference(backend, dtype, T, batch, with_h0):
    a, b, h0 = _inputs(batch, T, 5, dtype, seed=T * 7 + batch)
    h0 = h0 if with_h0 else None
    expected = _run("naive", a, b, h0)
    _assert_close(_run(backend, a, b, h0), expected, TOL[dtype])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "a_shape",
    [(3, 33, 4), (1, 33, 4), (3, 1, 4), (1, 1, 4), (4,), (1, 1, 1)],
    ids=["full", "shared-batch", "const-time", "const", "vector", "scalar"],
)
def test_broadcast_and_reverse(backend, dtype, reverse, a_shape):
    a, b, h0 = _inputs(3, 33, 4, dtype, seed=11, a_shape=a_shape)
    expected = _run("naive", a, b, h0, reverse=reverse)
    _assert_close(_run(backend, a, b, h0, reverse=reverse), expected, TOL[dtype])


def test_reference_is_the_recurrence():
    a, b, h0 = _inputs(2, 4, 3, torch.float64)
    h, h_last = linear_scan(a, b, h0, backend="naive")
    state = h0
    for t in range(4):
        state = a[:, t] * state + b[:, t]
        torch.testing.assert_close(h[:, t], state)
    torch.testing.assert_close(h_last, state)
    h_rev, first = linear_scan(a, b, h0, reverse=True, backend="naive")
    state = h0
    for t in reversed(range(4)):
        state = a[:, t] * state + b[:, t]
        torch.testing.assert_close(h_rev[:, t], state)
    torch.testing.assert_close(first, state)


@pytest.mark.parametrize("backend", ("naive", *FAST_BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(backend, dtype, reverse):
    a, b, h0 = _inputs(2, 6, 3, dtype, seed=3)
    a_const = a[:1, :1].clone()

    def fn(a_, b_, h0_, ac_):
        h, last = linear_scan(a_, b_, h0_, reverse=reverse, backend=backend)
        h2, _ = linear_scan(ac_, b_, None, reverse=reverse, backend=backend)
        return h, last, h2

    args = [x.clone().requires_grad_() for x in (a, b, h0, a_const)]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ("naive", *FAST_BACKENDS))
@pytest.mark.parametrize("split", [1, 17, 62])
def test_chunked_equals_full(backend, split):
    a, b, h0 = _inputs(2, 63, 6, torch.float64, seed=5)
    full, last = linear_scan(a, b, h0, backend=backend)
    first, carried = linear_scan(a[:, :split], b[:, :split], h0, backend=backend)
    second, last2 = linear_scan(a[:, split:], b[:, split:], carried, backend=backend)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last2, last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ("torch", "numba", "auto"))
def test_low_precision_accumulates_in_float32(dtype, backend):
    a, b, h0 = _inputs(2, 300, 4, torch.float32, seed=9)
    a, b, h0 = a.to(dtype), b.to(dtype), h0.to(dtype)
    h, h_last = linear_scan(a, b, h0, backend=backend)
    expected, _ = linear_scan(a.float(), b.float(), h0.float(), backend="naive")
    assert h.dtype == dtype and h_last.dtype == dtype
    torch.testing.assert_close(h, expected.to(dtype))
    a.requires_grad_()
    linear_scan(a, b, h0, backend=backend)[0].float().sum().backward()
    assert a.grad is not None and a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_trailing_dims(backend):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 9, 3, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 9, 3, 4, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    _assert_close(_run(backend, a, b, h0), _run("naive", a, b, h0), 1e-10)
    # a broadcasting over one trailing dim only
    _assert_close(_run(backend, a[:, :, :1], b, h0), _run("naive", a[:, :, :1], b, h0), 1e-10)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    T=st.integers(1, 40),
    n=st.integers(1, 5),
    a_fill=st.one_of(st.none(), st.sampled_from([0.0, 1.0, -1.0])),
    reverse=st.booleans(),
    seed=st.integers(0, 10_000),
    backend=st.sampled_from(FAST_BACKENDS),
)
def test_property_real(batch, T, n, a_fill, reverse, seed, backend):
    a, b, h0 = _inputs(batch, T, n, torch.float64, seed=seed)
    if a_fill is not None:
        # Special decays: a = 0 (reset), a = 1 (cumulative sum), a = -1 (alternating).
        mask = torch.rand(a.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.5
        a = torch.where(mask, torch.full_like(a, a_fill), a)
    _assert_close(_run(backend, a, b, h0, reverse), _run("naive", a, b, h0, reverse), 1e-9)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 40),
    n=st.integers(1, 4),
    unit_modulus=st.booleans(),
    seed=st.integers(0, 10_000),
    backend=st.sampled_from(FAST_BACKENDS),
)
def test_property_complex(T, n, unit_modulus, seed, backend):
    a, b, h0 = _inputs(2, T, n, torch.complex128, seed=seed)
    if unit_modulus:
        # |a| = 1: pure rotations, the edge of stability.
        a = a / a.abs().clamp_min(1e-12)
    _assert_close(_run(backend, a, b, h0), _run("naive", a, b, h0), 1e-9)


def test_auto_picks_native_on_cpu():
    reset_backend_choice()
    expected = "numba" if native_mod.AVAILABLE else "torch"
    assert resolve_backend(torch.device("cpu"), torch.float32) == expected
    assert resolve_backend(torch.device("cpu"), torch.complex64) == expected


def test_auto_falls_back_when_native_is_broken(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated broken compiled kernel")

    monkeypatch.setattr(native_mod, "native_scan", broken)
    reset_backend_choice()
    try:
        assert resolve_backend(torch.device("cpu"), torch.float64) == "torch"
        a, b, h0 = _inputs(2, 9, 3, torch.float64)
        h, _ = linear_scan(a, b, h0)
        expected, _ = linear_scan(a, b, h0, backend="naive")
        torch.testing.assert_close(h, expected)
    finally:
        reset_backend_choice()


def test_auto_falls_back_when_native_gives_wrong_numbers(monkeypatch):
    real = native_mod.native_scan
    monkeypatch.setattr(native_mod, "native_scan", lambda *a, **k: real(*a, **k) + 1.0)
    reset_backend_choice()
    try:
        assert resolve_backend(torch.device("cpu"), torch.float32) == "torch"
    finally:
        reset_backend_choice()


def test_native_unavailable_error(monkeypatch):
    monkeypatch.setattr(native_mod, "AVAILABLE", False)
    a, b, _ = _inputs(1, 3, 2, torch.float32)
    with pytest.raises(RuntimeError, match="needs numba"):
        linear_scan(a, b, backend="numba")
    reset_backend_choice()
    assert resolve_backend(torch.device("cpu"), torch.float32) == "torch"
    reset_backend_choice()


# -- bad input ----------------------------------------------------------------------------------


def test_error_not_a_tensor():
    with pytest.raises(TypeError, match="`a` must be a torch.Tensor"):
        linear_scan([1.0], torch.ones(1, 1, 1))


def test_error_integer_dtype():
    with pytest.raises(TypeError, match="`b` has dtype torch.int64; expected a floating"):
        linear_scan(torch.ones(1, 2, 3, dtype=torch.int64), torch.ones(1, 2, 3, dtype=torch.int64))


def test_error_dtype_mismatch():
    with pytest.raises(TypeError, match="`a` has dtype torch.float64 but `b` has torch.float32"):
        linear_scan(torch.ones(1, 2, 3, dtype=torch.float64), torch.ones(1, 2, 3))


def test_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"`a` of shape \(2, 5, 3\) does not broadcast"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 4, 3))


def test_error_too_few_dims():
    with pytest.raises(ValueError, match=r"`b` must have shape \(B, T, N, ...\)"):
        linear_scan(torch.ones(2, 5), torch.ones(2, 5))


def test_error_empty_time():
    with pytest.raises(ValueError, match="T = 0 time steps"):
        linear_scan(torch.ones(2, 0, 3), torch.ones(2, 0, 3))


def test_error_h0_shape():
    with pytest.raises(ValueError, match=r"`h0` has shape \(2, 4\); expected \(2, 3\)"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 3), torch.zeros(2, 4))


def test_error_h0_dtype():
    with pytest.raises(TypeError, match="`h0` has dtype torch.float64"):
        linear_scan(
            torch.ones(2, 5, 3), torch.ones(2, 5, 3), torch.zeros(2, 3, dtype=torch.float64)
        )


def test_error_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'; expected one of"):
        linear_scan(torch.ones(1, 2, 3), torch.ones(1, 2, 3), backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_matches_reference(dtype, reverse):
    a, b, h0 = _inputs(3, 1000, 70, dtype, seed=2)
    expected = _run("naive", a, b, h0, reverse)
    got = _run("triton", a.cuda(), b.cuda(), h0.cuda(), reverse)
    _assert_close([g.cpu() for g in got], expected, TOL[dtype] * 10)


@pytest.mark.parametrize("threshold", [0, 1 << 40], ids=["threaded", "serial"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_native_threaded_and_serial_paths(monkeypatch, threshold, dtype):
    monkeypatch.setattr(native_mod, "PARALLEL_MIN_ELEMENTS", threshold)
    for a_shape in [(3, 50, 70), (1, 1, 70)]:
        a, b, h0 = _inputs(3, 50, 70, dtype, seed=4, a_shape=a_shape)
        for reverse in (False, True):
            expected = _run("naive", a, b, h0, reverse)
            _assert_close(_run("numba", a, b, h0, reverse), expected, 1e-10)


def test_auto_choice_is_not_spoiled_by_a_first_call_without_grad():
    reset_backend_choice()
    try:
        a, b, h0 = _inputs(2, 9, 3, torch.float64)
        with torch.inference_mode():
            linear_scan(a, b, h0)
        with torch.no_grad():
            linear_scan(a, b, h0)
        expected = "numba" if native_mod.AVAILABLE else "torch"
        assert resolve_backend(torch.device("cpu"), torch.float64) == expected
    finally:
        reset_backend_choice()
