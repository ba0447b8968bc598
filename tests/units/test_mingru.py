import pytest
import torch

from memrnn.units import MinGRU, MinGRUState

F64 = torch.float64


@pytest.mark.parametrize("output_size", [None, 3])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_parallel_equals_recurrent_float64(output_size, T):
    torch.manual_seed(0)
    unit = MinGRU(4, 6, output_size=output_size, dtype=F64)
    x = torch.randn(2, T, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=F64, requires_grad=True)
    params = list(unit.parameters())
    results = []
    for mode in ("parallel", "recurrent"):
        unit.mode = mode
        y, state = unit(x, MinGRUState(h0))
        loss = y.sin().sum() + state.h.pow(2).sum()
        results.append((y, state.h, torch.autograd.grad(loss, [x, h0, *params])))
    (y_p, h_p, g_p), (y_r, h_r, g_r) = results
    torch.testing.assert_close(y_p, y_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_p, h_r, rtol=0, atol=1e-10)
    for gp, gr in zip(g_p, g_r, strict=True):
        torch.testing.assert_close(gp, gr, rtol=1e-10, atol=1e-10)


def test_parallel_equals_recurrent_float32():
    torch.manual_seed(1)
    unit = MinGRU(4, 6)
    x = torch.randn(3, 100, 4)
    y_p, s_p = unit(x)
    unit.mode = "recurrent"
    y_r, s_r = unit(x)
    torch.testing.assert_close(y_p, y_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_p.h, s_r.h, rtol=1e-5, atol=1e-5)


def test_hand_computed_two_steps():
    unit = MinGRU(1, 1, dtype=F64)
    with torch.no_grad():
        # Rows: W_z = 2, W_h = 3; biases b_z = 0, b_h = 1.
        unit.in_proj.weight.copy_(torch.tensor([[2.0], [3.0]]))
        unit.in_proj.bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[0.5], [-1.0]]], dtype=F64)
    h0 = torch.tensor([[2.0]], dtype=F64)
    sig = lambda v: 1 / (1 + torch.exp(-torch.tensor(v, dtype=F64)))  # noqa: E731
    # t = 1: z = σ(1), h̃ = 2.5;  t = 2: z = σ(−2), h̃ = −2.
    z1, z2 = sig(1.0), sig(-2.0)
    h1 = (1 - z1) * 2.0 + z1 * 2.5
    h2 = (1 - z2) * h1 + z2 * -2.0
    for mode in ("parallel", "recurrent"):
        unit.mode = mode
        y, state = unit(x, MinGRUState(h0))
        torch.testing.assert_close(y.flatten(), torch.stack([h1, h2]), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(state.h.flatten(), h2.reshape(1), rtol=1e-14, atol=1e-14)


def test_chunked_with_carried_state_equals_whole():
    torch.manual_seed(2)
    unit = MinGRU(4, 6, dtype=F64)
    x = torch.randn(2, 13, 4, dtype=F64)
    y, state = unit(x)
    y1, s1 = unit(x[:, :5])
    y2, s2 = unit(x[:, 5:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2.h, state.h, rtol=0, atol=1e-12)


def test_shapes_and_meta_state():
    unit = MinGRU(3, 8, output_size=5)
    y, state = unit(torch.randn(2, 4, 3))
    assert y.shape == (2, 4, 5) and state.h.shape == (2, 8)
    y_t, state = unit.step(torch.randn(2, 3), state)
    assert y_t.shape == (2, 5)
    assert unit.init_state(2, device="meta").h.is_meta


def test_errors():
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        MinGRU(3, 4, mode="fast")
    unit = MinGRU(3, 4)
    with pytest.raises(TypeError, match="must be a MinGRUState"):
        unit(torch.randn(2, 5, 3), (torch.zeros(2, 4),))
