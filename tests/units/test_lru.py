import math

import pytest
import torch

from memrnn.units import LRU, LRUState, is_no_weight_decay

F64 = torch.float64


def _lru(**kwargs) -> LRU:
    torch.manual_seed(0)
    return LRU(3, 6, state_size=5, dtype=F64, **kwargs)


def test_eigenvalues_inside_unit_disk_after_large_parameters():
    unit = _lru()
    with torch.no_grad():
        for scale in (1.0, 10.0, 20.0):
            unit.nu.copy_(torch.randn(5, dtype=F64) * scale)
            unit.theta.copy_(torch.randn(5, dtype=F64) * 3)
            assert (unit.eigenvalues().abs() < 1).all()
        # Very negative ν: exp(ν) underflows below epsilon, |λ| must still stay below 1.
        unit.nu.fill_(-100.0)
        assert (unit.eigenvalues().abs() < 1).all()
    unit32 = LRU(3, 6, state_size=5)
    with torch.no_grad():
        unit32.nu.fill_(-40.0)
    assert (unit32.eigenvalues().abs() < 1).all()


@pytest.mark.parametrize(
    ("r_min", "r_max", "max_phase"), [(0.9, 0.999, 2 * math.pi), (0.4, 0.6, 0.3)]
)
def test_ring_init_covers_the_ring(r_min, r_max, max_phase):
    torch.manual_seed(1)
    unit = LRU(2, 2, state_size=4000, r_min=r_min, r_max=r_max, max_phase=max_phase, dtype=F64)
    lam = unit.eigenvalues().detach()
    radius, phase = lam.abs(), torch.exp(unit.theta.detach())
    assert radius.min() >= r_min - 1e-12 and radius.max() <= r_max + 1e-12
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-12
    # Uniform on the ring area: |λ|² is uniform on [r_min², r_max²]; phases uniform.
    width, width_sq = r_max - r_min, r_max**2 - r_min**2
    assert radius.min() < r_min + 0.01 * width and radius.max() > r_max - 0.01 * width
    mean_sq = (radius**2).mean().item()
    assert mean_sq == pytest.approx((r_min**2 + r_max**2) / 2, abs=0.01 * width_sq + 1e-4)
    assert phase.mean().item() == pytest.approx(max_phase / 2, rel=0.05)


def test_gamma_normalisation_value():
    unit = _lru()
    gamma = torch.exp(unit.gamma_log.detach())
    expected = torch.sqrt(1 - unit.eigenvalues().detach().abs() ** 2)
    torch.testing.assert_close(gamma, expected, rtol=1e-12, atol=0)


def test_gamma_keeps_white_noise_state_variance_near_one():
    torch.manual_seed(2)
    unit = LRU(1, 1, state_size=64, r_min=0.5, r_max=0.9, dtype=F64)
    with torch.no_grad():
        unit.B_re.fill_(1.0)
        unit.B_im.zero_()
    x = torch.randn(64, 400, 1, dtype=F64)
    _, state = unit(x)
    # Stationary variance of x_t = λ x_{t−1} + γ u_t with unit-variance u is γ² / (1 − |λ|²) = 1.
    assert state.h.abs().pow(2).mean().item() == pytest.approx(1.0, rel=0.15)


def test_no_weight_decay_markers():
    unit = _lru()
    marked = {name for name, p in unit.named_parameters() if is_no_weight_decay(p)}
    assert marked == {"nu", "theta", "gamma_log"}


def test_recurrence_parameters_stay_float32_in_low_precision():
    unit = LRU(3, 4, dtype=torch.bfloat16)
    assert unit.nu.dtype == unit.theta.dtype == unit.gamma_log.dtype == torch.float32
    assert unit.B_re.dtype == torch.bfloat16
    unit = LRU(3, 4).half()
    assert unit.nu.dtype == torch.float32 and unit.B_re.dtype == torch.float16
    unit = LRU(3, 4)
    nu_before = unit.nu.detach().clone()
    unit.to(torch.bfloat16)
    assert unit.nu.dtype == torch.float32
    torch.testing.assert_close(unit.nu.detach(), nu_before, rtol=0, atol=0)
    y, state = unit(torch.randn(2, 5, 3, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.h.dtype == torch.complex64
    unit.double()
    assert unit.nu.dtype == torch.float64


@pytest.mark.parametrize("input_size", [6, 3])
@pytest.mark.parametrize("output_size", [None, 4])
@pytest.mark.parametrize("T", [1, 7, 16])
def test_parallel_equals_recurrent_float64(input_size, output_size, T):
    torch.manual_seed(3)
    unit = LRU(input_size, 6, output_size=output_size, state_size=5, dtype=F64)
    x = torch.randn(2, T, input_size, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 5, dtype=torch.complex128, requires_grad=True)
    params = [unit.nu, unit.theta, unit.gamma_log, unit.B_re, unit.B_im, unit.C_re, unit.C_im]
    params += [unit.D, *([] if unit.in_proj is None else [unit.in_proj.weight])]
    results = []
    for mode in ("parallel", "recurrent"):
        unit.mode = mode
        y, state = unit(x, LRUState(h0))
        loss = y.pow(2).sum() + (state.h * state.h.conj()).real.sum()
        grads = torch.autograd.grad(loss, [x, h0, *params])
        results.append((y, state.h, grads))
    (y_p, h_p, g_p), (y_r, h_r, g_r) = results
    torch.testing.assert_close(y_p, y_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_p, h_r, rtol=0, atol=1e-10)
    for gp, gr in zip(g_p, g_r, strict=True):
        torch.testing.assert_close(gp, gr, rtol=1e-10, atol=1e-10)


def test_chunked_with_carried_state_equals_whole():
    unit = _lru()
    x = torch.randn(2, 11, 3, dtype=F64)
    y, state = unit(x)
    y1, s1 = unit(x[:, :4])
    y2, s2 = unit(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=1e-10)
    torch.testing.assert_close(s2.h, state.h, rtol=0, atol=1e-10)


def test_step_matches_the_equations():
    unit = _lru()
    x = torch.randn(2, 3, dtype=F64)
    h_prev = torch.randn(2, 5, dtype=torch.complex128)
    lam = torch.exp(-torch.exp(unit.nu) + 1j * torch.exp(unit.theta))
    B = torch.complex(unit.B_re, unit.B_im)
    C = torch.complex(unit.C_re, unit.C_im)
    u = unit.in_proj(x)
    h = lam * h_prev + torch.exp(unit.gamma_log) * (u.to(B.dtype) @ B.T)
    y_ref = (h @ C.T).real + unit.D * u
    y, state = unit.step(x, LRUState(h_prev))
    torch.testing.assert_close(state.h, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_shapes_projections_and_meta_state():
    unit = LRU(4, 4)
    assert unit.in_proj is None and unit.out_proj is None and unit.state_size == 4
    unit = LRU(3, 8, output_size=2, state_size=16)
    y, state = unit(torch.randn(5, 9, 3))
    assert y.shape == (5, 9, 2) and state.h.shape == (5, 16) and state.h.dtype == torch.complex64
    meta = unit.init_state(5, device="meta")
    assert meta.h.is_meta and meta.h.shape == (5, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r_min": 0.99, "r_max": 0.9}, "r_min.*smaller than.*r_max"),
        ({"r_min": 0.9, "r_max": 0.9}, "r_min.*smaller than.*r_max"),
        ({"r_min": 0.0}, r"r_min.*open interval \(0, 1\)"),
        ({"r_max": 1.0}, r"r_max.*open interval \(0, 1\)"),
        ({"r_min": -0.5}, r"r_min.*open interval \(0, 1\)"),
        ({"max_phase": 0.0}, "max_phase.*positive"),
        ({"state_size": 0}, "state_size.*positive int"),
        ({"mode": "scan"}, "unknown mode 'scan'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRU(3, 4, **kwargs)


def test_wrong_state_type_raises():
    unit = LRU(3, 4)
    with pytest.raises(TypeError, match="must be a LRUState"):
        unit(torch.randn(2, 5, 3), (torch.zeros(2, 4, dtype=torch.complex64),))
