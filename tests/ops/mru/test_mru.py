"""The MRU ops: every backend == the naive loop (outputs, write rate, every gradient)."""

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.ops.mru import mru_layer, mru_scan
from memrnn.ops.mru import numba as mru_native
from memrnn.units.mru import BMRU, CMRU, bmru_scan

needs_numba = pytest.mark.skipif(not mru_native.AVAILABLE, reason="needs numba")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _torch_recurrence(c, beta, h0, epsilon, surrogate, sharpness, beta_abs):
    """The naive loop: the ground truth here."""
    naive = dispatch.implementation("mru", "naive", "mru_scan")
    return naive(c, beta, h0, epsilon, surrogate, sharpness, beta_abs)


def _backend(backend, name, dtype=torch.float64):
    """The function `name` of `backend`, or a skip where it cannot run here."""
    reason = dispatch.unavailable_reason("mru", backend, torch.device("cpu"), dtype)
    if reason is not None:
        pytest.skip(reason)
    return dispatch.implementation("mru", backend, name)


def _problem(batch, length, width, beta_shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = (1.5 * torch.randn(batch, length, width, generator=gen, dtype=dtype)).requires_grad_()
    beta = torch.randn(beta_shape, generator=gen, dtype=dtype).requires_grad_()
    h0 = torch.randn(batch, width, generator=gen, dtype=dtype).requires_grad_()
    gh = torch.randn(batch, length, width, generator=gen, dtype=dtype)
    return c, beta, h0, gh


def _outputs_and_grads(fn, c, beta, h0, gh):
    h, rate = fn(c, beta, h0)
    # The write rate enters the loss too, as in `write_rate_penalty`.
    loss = (h * gh).sum() + 3.0 * rate
    grads = torch.autograd.grad(loss, (c, beta, h0))
    return [h.detach(), rate.detach(), *grads]


def _assert_close(got, want, dtype):
    for name, x, y in zip(("h", "rate", "dc", "dbeta", "dh0"), got, want, strict=True):
        scale = max(1.0, y.abs().max().item())
        err = (x - y).abs().max().item()
        assert err <= TOL[dtype] * scale, f"{name}: max error {err:g} (scale {scale:g})"


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("surrogate", list(mru_native.SURROGATE_CODES))
@pytest.mark.parametrize("epsilon", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("beta_abs", [True, False])
def test_scan_backend_equals_naive(backend, dtype, surrogate, epsilon, beta_abs):
    run = _backend(backend, "mru_scan", dtype)
    for beta_shape in [(3, 63, 5), (5,), (1, 1, 5)]:
        c, beta, h0, gh = _problem(3, 63, 5, beta_shape, dtype)
        if not beta_abs:
            beta = beta.detach().abs().requires_grad_()
        want = _outputs_and_grads(
            lambda c, b, h: _torch_recurrence(c, b, h, epsilon, surrogate, 1.7, beta_abs),
            c,
            beta,
            h0,
            gh,
        )
        got = _outputs_and_grads(
            lambda c, b, h: run(c, b, h, epsilon, surrogate, 1.7, beta_abs),
            c,
            beta,
            h0,
            gh,
        )
        assert got[3].shape == beta.shape
        _assert_close(got, want, dtype)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("length", [1, 7, 63, 1000])
def test_scan_backend_equals_naive_across_lengths(backend, length):
    run = _backend(backend, "mru_scan")
    c, beta, h0, gh = _problem(2, length, 9, (2, length, 9), torch.float64, seed=length)
    want = _outputs_and_grads(
        lambda c, b, h: _torch_recurrence(c, b, h, 0.0, "atan", 1.0, True), c, beta, h0, gh
    )
    got = _outputs_and_grads(
        lambda c, b, h: run(c, b, h, 0.0, "atan", 1.0, True),
        c,
        beta,
        h0,
        gh,
    )
    _assert_close(got, want, torch.float64)


@needs_numba
def test_threaded_kernels_equal_serial(monkeypatch):
    c, beta, h0, gh = _problem(4, 40, 70, (4, 40, 70), torch.float64)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(mru_native, "PARALLEL_MIN_ELEMENTS", threshold)
        results.append(
            _outputs_and_grads(
                lambda c, b, h: mru_native.mru_scan(c, b, h, 0.3, "atan", 1.0, True),
                c,
                beta,
                h0,
                gh,
            )
        )
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)


@needs_numba
def test_nan_candidates_propagate_as_in_torch_ops():
    c = torch.tensor([[[0.5], [float("nan")], [2.0]]], dtype=torch.float64)
    beta, h0 = torch.ones(1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    fused, _ = mru_native.mru_scan(c, beta, h0, 0.0, "atan", 1.0)
    plain, _ = _torch_recurrence(c, beta, h0, 0.0, "atan", 1.0, False)
    assert torch.equal(fused.isnan(), plain.isnan())
    assert fused[0, 0, 0] == 1.0 and fused[0, 1:].isnan().all()


@pytest.mark.parametrize("cls", [BMRU, CMRU])
@pytest.mark.parametrize("threshold", ["input", "constant"])
def test_unit_fused_path_equals_scan_path(cls, threshold):
    torch.manual_seed(0)
    unit = cls(4, 6, threshold=threshold).double()
    x = 2 * torch.randn(3, 50, 4, dtype=torch.float64)
    results = []
    for backend in ("auto", "naive"):
        unit.backend = backend
        unit.zero_grad(set_to_none=True)
        y, state = unit(x)
        (y.square().sum() + unit.last_write_rate).backward()
        grads = [p.grad.clone() for p in unit.parameters()]
        results.append([y.detach(), state.h.detach(), unit.last_write_rate.detach(), *grads])
    for x_fused, x_plain in zip(*results, strict=True):
        torch.testing.assert_close(x_fused, x_plain, rtol=1e-10, atol=1e-10)


def test_unsupported_problems_use_torch_ops(monkeypatch):
    c = torch.randn(2, 5, 3)
    cpu = torch.device("cpu")
    # A callable surrogate, or a dtype the kernels lack, runs in torch ops.
    assert mru_native.SURROGATE_CODES.keys() >= {"atan"}
    with pytest.raises(RuntimeError, match="needs a named surrogate"):
        _backend("numba", "mru_scan")(c, c, c[:, 0], 0.0, lambda u: torch.ones_like(u), 1.0)
    assert dispatch.resolve("mru", "auto", cpu, torch.bfloat16) == "torch"
    assert dispatch.resolve("mru", "auto", cpu, torch.float32, compiled=False) == "torch"
    monkeypatch.setattr(mru_native, "AVAILABLE", False)
    assert dispatch.resolve("mru", "auto", cpu, torch.float32) == "torch"

    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel must not run without numba")

    monkeypatch.setattr(mru_native, "mru_scan", refuse)
    monkeypatch.setattr(mru_native, "mru_layer", refuse)
    torch.manual_seed(0)
    unit = BMRU(3, 4).double()
    y, state = unit(torch.randn(2, 9, 3, dtype=torch.float64))
    assert y.shape == (2, 9, 4) and state.h.shape == (2, 4)
    h, h_last = bmru_scan(c.double(), torch.ones(3, dtype=torch.float64), torch.ones(2, 3).double())
    assert torch.equal(h_last, h[:, -1])
    with pytest.raises(RuntimeError, match="backend of op 'mru' needs numba"):
        mru_scan(c, c, c[:, 0], 0.0, backend="numba")


def _layer_problem(dtype, batch=3, length=20, inputs=4, width=5, outputs=3, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=dtype)).requires_grad_()

    args = (
        randn(batch, length, inputs),  # x
        randn(2 * width, inputs, scale=1.5),  # w_in = [W_c; W_beta]
        randn(2 * width),  # b_in
        randn(batch, width),  # h0
        randn(outputs, width),  # w_out
        randn(outputs),  # b_out
    )
    upstream = (
        torch.randn(batch, length, outputs, generator=gen, dtype=dtype),
        torch.randn(batch, width, generator=gen, dtype=dtype),
    )
    return args, upstream


_layer_torch = dispatch.implementation("mru", "naive", "mru_layer")


def _layer_results(fn, args, upstream, options):
    y, h_last, rate = fn(*args, *options)
    # Every output reaches the loss: y, the final state and the write rate.
    loss = (y * upstream[0]).sum() + (h_last * upstream[1]).sum() + 3.0 * rate
    return [y.detach(), h_last.detach(), rate.detach(), *torch.autograd.grad(loss, args)]


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length", [1, 7, 63])
def test_layer_backend_equals_naive(compare_to_naive, backend, dtype, length):
    args, _ = _layer_problem(dtype, length=length)
    for surrogate in mru_native.SURROGATE_CODES:
        compare_to_naive("mru", "mru_layer", backend, [*args, 0.4, surrogate, 1.7], dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows", [7, 20, 2048])
@pytest.mark.parametrize("epsilon", [0.0, 0.4, 1.0])
def test_layer_equals_naive_across_chunks(monkeypatch, dtype, rows, epsilon):
    # Chunks of 7 rows start and end inside batch rows, chunks of 20 on their boundaries.
    monkeypatch.setattr(mru_native, "CHUNK_ROWS", rows)
    for surrogate in mru_native.SURROGATE_CODES:
        args, upstream = _layer_problem(dtype)
        options = (epsilon, surrogate, 1.7)
        got = _layer_results(mru_native.mru_layer, args, upstream, options)
        want = _layer_results(_layer_torch, args, upstream, options)
        names = ("y", "h_T", "rate", "dx", "dw_in", "db_in", "dh0", "dw_out", "db_out")
        for name, a, b in zip(names, got, want, strict=True):
            scale = max(1.0, b.abs().max().item())
            err = (a - b).abs().max().item()
            assert err <= TOL[dtype] * scale, f"{surrogate} {name}: error {err:g}"


@needs_numba
def test_layer_threaded_kernels_equal_serial(monkeypatch):
    monkeypatch.setattr(mru_native, "CHUNK_ROWS", 7)
    args, upstream = _layer_problem(torch.float64, batch=4, length=9, width=70)
    results = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(mru_native, "LAYER_PARALLEL_MIN_ELEMENTS", threshold)
        results.append(_layer_results(mru_native.mru_layer, args, upstream, (0.3, "atan", 1.0)))
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)


@needs_numba
def test_layer_under_no_grad_keeps_nothing_for_a_backward_pass(monkeypatch):
    calls = []
    real = mru_native.empty
    monkeypatch.setattr(mru_native, "empty", lambda *a: calls.append(a[0]) or real(*a))
    monkeypatch.setattr(mru_native, "CHUNK_ROWS", 7)
    args, _ = _layer_problem(torch.float64)
    with torch.no_grad():
        y, h_last, _ = mru_native.mru_layer(*args, 0.0, "atan", 1.0)
    assert calls == [(3, 20, 3)]  # y only: p and h live one chunk at a time
    calls.clear()
    y_grad, h_grad, _ = mru_native.mru_layer(*args, 0.0, "atan", 1.0)
    assert sorted(calls) == sorted([(60, 10), (60, 5), (3, 20, 3)])  # p, h, y
    assert torch.equal(y, y_grad.detach()) and torch.equal(h_last, h_grad.detach())


def test_layer_refuses_what_its_kernels_cannot_run():
    args, _ = _layer_problem(torch.float64)
    with pytest.raises(RuntimeError, match="needs a named surrogate"):
        mru_native.mru_layer(*args, 0.0, lambda u: torch.ones_like(u), 1.0)
    with pytest.raises(RuntimeError, match="does not support dtype torch.bfloat16"):
        mru_native.mru_layer(args[0].detach().bfloat16(), *args[1:], 0.0, "atan", 1.0)
    # The op itself runs a callable surrogate in torch ops.
    y, h_last, rate = mru_layer(*args, 0.0, lambda u: torch.ones_like(u), 1.0)
    assert y.shape == (3, 20, 3) and h_last.shape == (3, 5) and rate.dim() == 0
