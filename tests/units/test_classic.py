import pytest
import torch

from memrnn.units import GRU, LSTM, GRUState, LSTMState

F64 = torch.float64


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("output_size", [None, 3])
def test_forward_equals_step_loop(cls, output_size):
    torch.manual_seed(0)
    unit = cls(4, 5, output_size=output_size, dtype=F64)
    x = torch.randn(2, 9, 4, dtype=F64, requires_grad=True)
    state0 = unit.init_state(2)
    state0 = type(state0)(*(torch.randn_like(s).requires_grad_() for s in state0))
    params = list(unit.parameters())
    y, state = unit(x, state0)
    g = torch.autograd.grad(y.sum() + sum(s.sum() for s in state), [x, *state0, *params])
    ys, st = [], state0
    for t in range(9):
        y_t, st = unit.step(x[:, t], st)
        ys.append(y_t)
    y2 = torch.stack(ys, 1)
    g2 = torch.autograd.grad(y2.sum() + sum(s.sum() for s in st), [x, *state0, *params])
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-12)
    for a, b in zip(state, st, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(g, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_matches_torch_module():
    torch.manual_seed(1)
    unit = GRU(4, 5)
    x = torch.randn(3, 6, 4)
    y, state = unit(x)
    y_ref, h_ref = unit.rnn(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.h, h_ref[0])


def test_state_shapes():
    lstm, gru = LSTM(3, 7), GRU(3, 7)
    s = lstm.init_state(4)
    assert isinstance(s, LSTMState) and s.h.shape == s.c.shape == (4, 7)
    assert isinstance(gru.init_state(4), GRUState) and gru.init_state(4).h.shape == (4, 7)
    _, s = lstm(torch.randn(4, 2, 3))
    assert s.h.shape == s.c.shape == (4, 7)
    _, s = gru.step(torch.randn(4, 3))
    assert s.h.shape == (4, 7)
    assert lstm.init_state(4, device="meta").c.is_meta


def test_wrong_state_type_raises():
    lstm, gru = LSTM(3, 7), GRU(3, 7)
    x = torch.randn(4, 2, 3)
    with pytest.raises(TypeError, match="must be a LSTMState"):
        lstm(x, GRUState(torch.zeros(4, 7)))
    with pytest.raises(TypeError, match="must be a GRUState"):
        gru(x, (torch.zeros(1, 4, 7),))
    with pytest.raises(TypeError, match="must be a LSTMState"):
        lstm.step(x[:, 0], (torch.zeros(4, 7), torch.zeros(4, 7)))


def test_parallel_mode_is_refused():
    with pytest.raises(ValueError, match="recurrent-only"):
        LSTM(3, 4, mode="parallel")
    with pytest.raises(ValueError, match="recurrent-only"):
        GRU(3, 4, mode="parallel")
