import math

import pytest
import torch

from memrnn.units.mru import (
    BMRU,
    CMRU,
    BMRUState,
    bistable_threshold,
    bmru_scan,
    write_rate_penalty,
)


def _unit(cls=BMRU, **kwargs):
    torch.manual_seed(0)
    return cls(3, 8, **kwargs).double()


@pytest.mark.parametrize("threshold", ["input", "constant"])
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_states_are_exactly_plus_or_minus_one(threshold, mode):
    unit = _unit(threshold=threshold, mode=mode)
    h0 = unit.init_state(4).h
    assert set(h0.unique().tolist()) <= {-1.0, 1.0}
    hs = []
    state = None
    x = 3 * torch.randn(4, 50, 3, dtype=torch.float64)
    for t in range(50):
        _, state = unit.step(x[:, t], state)
        hs.append(state.h)
    h = torch.stack(hs, 1)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    _, final = unit(x)
    assert torch.equal(final.h, h[:, -1])


def test_zero_input_inside_the_band_never_drifts():
    unit = _unit()
    with torch.no_grad():
        unit.candidate.bias.uniform_(-0.5, 0.5)
        unit.threshold_proj.bias.fill_(1.0)
    x = torch.zeros(1, 100_000, 3, dtype=torch.float64)
    start = unit.init_state(1)
    y, final = unit(x, start)
    assert unit.mode == "parallel"
    assert torch.equal(final.h, start.h)
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert unit.last_write_rate.item() == 0.0


def test_writes_follow_the_sign_of_the_candidate():
    c = torch.tensor([[[0.5], [2.0], [0.1], [-3.0], [-0.9]]], dtype=torch.float64)
    h, h_last = bmru_scan(c, torch.ones(1), torch.tensor([[-1.0]], dtype=torch.float64))
    assert h.flatten().tolist() == [-1.0, 1.0, 1.0, -1.0, -1.0]
    assert h_last.item() == -1.0


def test_gradients_reach_every_parameter_and_are_finite():
    unit = _unit()
    x = torch.randn(4, 30, 3, dtype=torch.float64, requires_grad=True)
    y, state = unit(x)
    (y.square().sum() + state.h.sum()).backward()
    for name in (
        "candidate.weight",
        "candidate.bias",
        "threshold_proj.weight",
        "threshold_proj.bias",
        "alpha",
        "h0",
        "out.weight",
    ):
        grad = unit.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("surrogate", ["atan", "fast-sigmoid", "triangle", "straight-through"])
def test_surrogate_gradients_are_nonzero_and_finite(surrogate):
    c = torch.randn(2, 20, 4, dtype=torch.float64, requires_grad=True)
    beta = torch.rand(2, 20, 4, dtype=torch.float64, requires_grad=True)
    h, _ = bmru_scan(c, beta, torch.ones(2, 4, dtype=torch.float64), surrogate=surrogate)
    gc, gb = torch.autograd.grad((h * torch.randn_like(h)).sum(), (c, beta))
    for g in (gc, gb):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_constant_threshold_gets_a_gradient():
    unit = _unit(threshold="constant")
    y, _ = unit(torch.randn(2, 30, 3, dtype=torch.float64))
    y.square().sum().backward()
    assert unit.beta.grad is not None and unit.beta.grad.abs().sum() > 0
    assert not hasattr(unit, "threshold_proj")


def test_internal_clock_equilibrium_sign_equals_the_bmru_state():
    # The clock picture of docs/units/mru.md: iterate tanh(a h + c) from the previous state
    # until it settles; its sign is the BMRU state with threshold beta(a) = a h_f - atanh(h_f),
    # h_f = sqrt(1 - 1/a).
    a = 2.0
    beta = bistable_threshold(a)
    h_f = math.sqrt(1 - 1 / a)
    assert beta == pytest.approx(a * h_f - math.atanh(h_f))
    gen = torch.Generator().manual_seed(0)
    c = 1.6 * torch.randn(4, 60, 16, generator=gen, dtype=torch.float64)
    # Keep |c| away from the fold at beta(a), where convergence slows without bound.
    c = torch.where((c.abs() - beta).abs() < 0.05, c + 0.1 * c.sign(), c)
    h0 = torch.where(torch.rand(4, 16, generator=gen) < 0.5, -1.0, 1.0).double()
    h_bmru, _ = bmru_scan(c, torch.full((16,), beta, dtype=torch.float64), h0)
    h = h0.clone()
    for t in range(c.shape[1]):
        for _ in range(400):
            h = torch.tanh(a * h + c[:, t])
        assert torch.equal(torch.sign(h), h_bmru[:, t])
    inside = (c.abs() < beta).float().mean().item()
    assert 0.2 < inside < 0.8


def test_cmru_states_lie_on_the_integer_lattice_and_pass_gradients_unchanged():
    unit = _unit(CMRU)
    assert unit.epsilon == 1.0
    x = 3 * torch.randn(2, 40, 3, dtype=torch.float64)
    start = unit.init_state(2)
    h0 = start.h.detach().clone().requires_grad_()
    unit.mode = "recurrent"
    hs, state = [], BMRUState(h0)
    for t in range(40):
        _, state = unit.step(x[:, t], state)
        hs.append(state.h)
    h = torch.stack(hs, 1)
    assert torch.equal(h, h.round()) and h.abs().max() > 1
    (grad,) = torch.autograd.grad(state.h.sum(), h0)
    assert torch.equal(grad, torch.ones_like(grad))
    unit.mode = "parallel"
    _, final = unit(x, BMRUState(h0))
    (grad,) = torch.autograd.grad(final.h.sum(), h0)
    assert torch.equal(grad, torch.ones_like(grad))


def test_epsilon_is_settable_without_rebuilding():
    unit = _unit(CMRU)
    x = 3 * torch.randn(2, 40, 3, dtype=torch.float64)
    params = [p.clone() for p in unit.parameters()]
    unit.epsilon = 0.0
    _, final = unit(x)
    assert set(final.h.unique().tolist()) <= {-1.0, 1.0}
    reference = _unit(BMRU)
    reference.load_state_dict(unit.state_dict())
    torch.testing.assert_close(unit(x)[0], reference(x)[0], rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(params, unit.parameters(), strict=True))
    unit.epsilon = 0.5
    _, half = unit(x)
    assert not torch.equal(half.h, final.h)


def test_write_rate_penalty():
    model = torch.nn.ModuleList([BMRU(3, 4), CMRU(3, 4)])
    assert write_rate_penalty(model, 0.1).item() == 0.0
    x = torch.randn(2, 30, 3)
    model[0](x)
    model[1].mode = "recurrent"
    model[1](x)
    rates = [m.last_write_rate for m in model]
    expected = 0.1 * (rates[0] ** 2 + rates[1] ** 2)
    penalty = write_rate_penalty(model, 0.1)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert model[0].candidate.weight.grad.abs().sum() > 0


def test_parameter_dtypes_and_device_arguments():
    unit = BMRU(3, 4, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in unit.parameters())
    assert unit.init_state(2, device="meta").h.device.type == "meta"


def test_error_paths():
    unit = BMRU(3, 4)
    with pytest.raises(ValueError, match=r"`x` must have shape \(B, T, 3\); got \(2, 5, 4\)"):
        unit(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"`x_t` must have shape \(B, 3\)"):
        unit.step(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"state.h has shape \(2, 5\); expected \(2, 4\)"):
        unit(torch.randn(2, 5, 3), BMRUState(torch.zeros(2, 5)))
    with pytest.raises(TypeError, match="`state` must be a BMRUState"):
        unit(torch.randn(2, 5, 3), (torch.zeros(2, 4),))
    with pytest.raises(ValueError, match=r"unknown mode 'fast'; expected one of \('par"):
        BMRU(3, 4, mode="fast")
    with pytest.raises(ValueError, match=r"unknown surrogate 'tanh'; expected one of"):
        BMRU(3, 4, surrogate="tanh")
    with pytest.raises(ValueError, match=r"unknown threshold 'learned'; expected one of \('inp"):
        BMRU(3, 4, threshold="learned")
    with pytest.raises(ValueError, match=r"`epsilon` must be a number in \[0, 1\]"):
        unit.epsilon = 1.5
    with pytest.raises(ValueError, match="bistable only for a > 1"):
        bistable_threshold(1.0)


def _grads_after_setting_sharpness(mode: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    unit = BMRU(3, 4, mode=mode).double()
    # Set after construction, as an annealing schedule does.
    unit.sharpness = 5.0
    x = torch.randn(2, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    y, state = unit(x)
    loss = (y**2).sum() + (state.h**2).sum()
    return torch.autograd.grad(loss, [x, *unit.parameters()])


def test_sharpness_set_after_construction_reaches_both_paths():
    parallel = _grads_after_setting_sharpness("parallel")
    recurrent = _grads_after_setting_sharpness("recurrent")
    for a, b in zip(parallel, recurrent, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sharpness_must_be_positive():
    unit = BMRU(3, 4)
    with pytest.raises(ValueError, match="sharpness` must be a positive finite number"):
        unit.sharpness = 0.0
    with pytest.raises(ValueError, match="sharpness` must be a positive finite number"):
        BMRU(3, 4, sharpness=float("inf"))
