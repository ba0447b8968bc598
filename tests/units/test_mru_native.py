import pytest
import torch

from memrnn.scan import linear_scan
from memrnn.units import mru_native
from memrnn.units.mru import BMRU, CMRU, _scan_inputs, bmru_scan
from memrnn.units.surrogate import get_surrogate

needs_numba = pytest.mark.skipif(not mru_native.AVAILABLE, reason="needs numba")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _torch_recurrence(c, beta, h0, epsilon, surrogate, sharpness, beta_abs):
    """The recurrence from torch ops and the reference scan: the ground truth here."""
    if beta_abs:
        beta = beta.abs()
    a, b, z = _scan_inputs(c, beta, epsilon, get_surrogate(surrogate, sharpness))
    h, _ = linear_scan(a, b, h0, backend="reference")
    return h, z.mean()


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


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("surrogate", list(mru_native.SURROGATE_CODES))
@pytest.mark.parametrize("epsilon", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("beta_abs", [True, False])
def test_fused_equals_torch_ops(dtype, surrogate, epsilon, beta_abs):
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
            lambda c, b, h: mru_native.fused_mru_scan(c, b, h, epsilon, surrogate, 1.7, beta_abs),
            c,
            beta,
            h0,
            gh,
        )
        assert got[3].shape == beta.shape
        _assert_close(got, want, dtype)


@needs_numba
@pytest.mark.parametrize("length", [1, 7, 1000])
def test_fused_equals_torch_ops_across_lengths(length):
    c, beta, h0, gh = _problem(2, length, 9, (2, length, 9), torch.float64, seed=length)
    want = _outputs_and_grads(
        lambda c, b, h: _torch_recurrence(c, b, h, 0.0, "atan", 1.0, True), c, beta, h0, gh
    )
    got = _outputs_and_grads(
        lambda c, b, h: mru_native.fused_mru_scan(c, b, h, 0.0, "atan", 1.0, True),
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
                lambda c, b, h: mru_native.fused_mru_scan(c, b, h, 0.3, "atan", 1.0, True),
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
    fused, _ = mru_native.fused_mru_scan(c, beta, h0, 0.0, "atan", 1.0)
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
    for backend in ("auto", "reference"):
        unit.scan_backend = backend
        unit.zero_grad(set_to_none=True)
        y, state = unit(x)
        (y.square().sum() + unit.last_write_rate).backward()
        grads = [p.grad.clone() for p in unit.parameters()]
        results.append([y.detach(), state.h.detach(), unit.last_write_rate.detach(), *grads])
    for x_fused, x_plain in zip(*results, strict=True):
        torch.testing.assert_close(x_fused, x_plain, rtol=1e-10, atol=1e-10)


def test_unsupported_problems_use_torch_ops(monkeypatch):
    c = torch.randn(2, 5, 3)
    assert not mru_native.supports(c, lambda u: torch.ones_like(u))
    assert not mru_native.supports(c.to(torch.bfloat16), "atan")
    monkeypatch.setattr(mru_native, "AVAILABLE", False)
    assert not mru_native.supports(c, "atan")

    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel must not run without numba")

    monkeypatch.setattr(mru_native, "fused_mru_scan", refuse)
    torch.manual_seed(0)
    unit = BMRU(3, 4).double()
    y, state = unit(torch.randn(2, 9, 3, dtype=torch.float64))
    assert y.shape == (2, 9, 4) and state.h.shape == (2, 4)
    h, h_last = bmru_scan(c.double(), torch.ones(3, dtype=torch.float64), torch.ones(2, 3).double())
    assert torch.equal(h_last, h[:, -1])
