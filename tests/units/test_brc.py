import pytest
import torch

from memrnn.units import BRC, NBRC, BRCState

F64 = torch.float64


def _reference_step(unit, x_t, h, memory_a, memory_c):
    """One step written straight from the paper's equations."""
    U_a, U_c, U = unit.in_proj.weight.chunk(3, dim=0)
    b_a, b_c, b = unit.in_proj.bias.chunk(3)
    a = 1 + torch.tanh(x_t @ U_a.T + b_a + memory_a(h))
    c = torch.sigmoid(x_t @ U_c.T + b_c + memory_c(h))
    return c * h + (1 - c) * torch.tanh(x_t @ U.T + b + a * h)


def _randomise(unit):
    torch.manual_seed(5)
    with torch.no_grad():
        for p in unit.parameters():
            p.copy_(torch.randn_like(p) * 0.7)


def test_brc_step_matches_equations():
    unit = BRC(3, 4, dtype=F64)
    _randomise(unit)
    x_t, h = torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64).tanh()
    expected = _reference_step(unit, x_t, h, lambda v: unit.w_a * v, lambda v: unit.w_c * v)
    y, state = unit.step(x_t, BRCState(h))
    torch.testing.assert_close(state.h, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)


def test_nbrc_step_matches_equations():
    unit = NBRC(3, 4, dtype=F64)
    _randomise(unit)
    x_t, h = torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64).tanh()
    expected = _reference_step(unit, x_t, h, lambda v: v @ unit.W_a.T, lambda v: v @ unit.W_c.T)
    _, state = unit.step(x_t, BRCState(h))
    torch.testing.assert_close(state.h, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("cls", [BRC, NBRC])
@pytest.mark.parametrize("output_size", [None, 2])
def test_forward_equals_step_loop_with_gradients(cls, output_size):
    torch.manual_seed(0)
    unit = cls(3, 5, output_size=output_size, dtype=F64)
    x = torch.randn(2, 7, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 5, dtype=F64, requires_grad=True)
    params = list(unit.parameters())
    y, state = unit(x, BRCState(h0))
    g = torch.autograd.grad(y.sum() + state.h.sum(), [x, h0, *params])
    ys, st = [], BRCState(h0)
    for t in range(7):
        y_t, st = unit.step(x[:, t], st)
        ys.append(y_t)
    y2 = torch.stack(ys, 1)
    g2 = torch.autograd.grad(y2.sum() + st.h.sum(), [x, h0, *params])
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.h, st.h, rtol=0, atol=1e-12)
    for a, b in zip(g, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_initialisation():
    torch.manual_seed(0)
    brc = BRC(6, 4)
    assert torch.equal(brc.w_a, torch.ones(4)) and torch.equal(brc.w_c, torch.ones(4))
    assert torch.equal(brc.in_proj.bias, torch.zeros(12))
    limit = (6 / (6 + 4)) ** 0.5
    assert brc.in_proj.weight.abs().max() <= limit
    nbrc = NBRC(6, 4)
    for W in (nbrc.W_a, nbrc.W_c):
        torch.testing.assert_close(W @ W.T, torch.eye(4), rtol=1e-5, atol=1e-5)
    assert torch.equal(nbrc.in_proj.bias, torch.zeros(12))


@pytest.mark.parametrize("cls", [BRC, NBRC])
def test_parallel_mode_is_refused(cls):
    with pytest.raises(ValueError, match="recurrent-only"):
        cls(3, 4, mode="parallel")
    unit = cls(3, 4)
    with pytest.raises(ValueError, match="recurrent-only"):
        unit.mode = "parallel"


def test_bistability_persistent_memory():
    unit = BRC(1, 1, dtype=F64)
    with torch.no_grad():
        unit.in_proj.weight.zero_()
        # a = 1 + tanh(b_a + w_a h) ≈ 1.96 > 1: bistable; c = σ(0) = 0.5.
        unit.in_proj.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
        unit.w_a.zero_()
        unit.w_c.zero_()
    x = torch.zeros(2, 500, 1, dtype=F64)
    h0 = torch.tensor([[0.3], [-0.3]], dtype=F64)
    y, state = unit(x, BRCState(h0))
    fixed = state.h.flatten()
    # Settled (no drift over the last 100 steps) at two distinct, nonzero fixed points.
    tail = y[:, -100:, 0]  # (B, 100)
    torch.testing.assert_close(tail, fixed.unsqueeze(1).expand_as(tail), rtol=0, atol=1e-12)
    assert fixed[0] > 0.5 and fixed[1] < -0.5
    a = 1 + torch.tanh(torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(torch.tanh(a * fixed), fixed, rtol=0, atol=1e-12)
    # Monostable comparison (a < 1): both starts decay to the same point, 0.
    with torch.no_grad():
        unit.in_proj.bias[0] = -2.0
    _, state = unit(x, BRCState(h0))
    torch.testing.assert_close(state.h, torch.zeros(2, 1, dtype=F64), rtol=0, atol=1e-6)


def test_shapes_and_state_errors():
    unit = NBRC(3, 8, output_size=2)
    y, state = unit(torch.randn(4, 6, 3))
    assert y.shape == (4, 6, 2) and state.h.shape == (4, 8)
    assert unit.init_state(4, device="meta").h.is_meta
    with pytest.raises(TypeError, match="must be a BRCState"):
        unit(torch.randn(4, 6, 3), torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"state.h has shape \(4, 7\)"):
        unit(torch.randn(4, 6, 3), BRCState(torch.zeros(4, 7)))
