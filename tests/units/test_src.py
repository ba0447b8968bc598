"""SRC: single-neuron behaviour, resting state, every backend == step loop, clamp, stats, raster."""

import pytest
import torch

from memrnn.ops.src import numba as src_native
from memrnn.units.src import SRC, SRCState, spike_stats
from memrnn.viz.spikes import raster_plot

needs_numba = pytest.mark.skipif(not src_native.AVAILABLE, reason="needs numba")


def _drive(level: float, T: int = 150) -> torch.Tensor:
    """Spikes of a single neuron whose one input synapse (weight 1) is held at `level`."""
    cell = SRC(1, 1).double()
    with torch.no_grad():
        cell.weight_s.fill_(1.0)
    x = torch.full((1, T, 1), level, dtype=torch.float64)
    y, _ = cell(x)
    return y[0, :, 0]


def _bumps(y: torch.Tensor) -> list[tuple[int, int]]:
    """(onset, width) of every bump where y > 0.1."""
    above = (y > 0.1).tolist()
    out, start = [], None
    for t, a in enumerate([*above, False]):
        if a and start is None:
            start = t
        elif not a and start is not None:
            out.append((start, t - start))
            start = None
    return out


def test_silent_at_rest():
    assert _drive(0.0).abs().max() == 0


def test_spike_shape_and_refractory_period():
    bumps = _bumps(_drive(0.5))
    assert len(bumps) >= 3
    assert all(1 <= w <= 4 for _, w in bumps)
    gaps = [b[0] - (a[0] + a[1]) for a, b in zip(bumps, bumps[1:], strict=False)]
    assert min(gaps) >= 10


def test_rate_increases_with_drive():
    counts = [len(_bumps(_drive(level, T=400))) for level in (0.2, 0.35, 0.6, 1.0)]
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resting_state_is_equilibrium(dtype):
    cell = SRC(3, 6).to(dtype)
    with torch.no_grad():
        cell.bias_h.copy_(torch.linspace(-9.0, -4.0, 6))
    state = cell.init_state(2)
    assert state.h.dtype == dtype and (state.h != 0).all()
    _, after = cell.step(torch.zeros(2, 3, dtype=dtype), state)
    for a, b in zip(state, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_init_state_meta_and_cache():
    cell = SRC(3, 5)
    meta = cell.init_state(4, device="meta")
    assert isinstance(meta, SRCState) and meta.h.shape == (4, 5) and meta.h.device.type == "meta"
    first = cell.init_state(2).h
    with torch.no_grad():
        cell.bias_h.fill_(-5.0)
    assert not torch.equal(first, cell.init_state(2).h)


def _run_cell(cell: SRC, x: torch.Tensor, backend: str, state: SRCState):
    """Outputs, final state and gradients (x, W_s, b_h, initial state) of a loss on both."""
    cell.backend = backend
    x_ = x.clone().requires_grad_()
    s0 = SRCState(*(t.clone().requires_grad_() for t in state))
    y, s = cell(x_, s0)
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    loss = (y * w).sum() + s.h.sum() + 2 * s.hs.sum() + 0.5 * s.i.sum()
    g = torch.autograd.grad(loss, [x_, cell.weight_s, cell.bias_h, *s0], allow_unused=True)
    return y, s, g


@pytest.mark.parametrize("backend", [pytest.param("numba", marks=needs_numba), "torch"])
@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("detach_recurrence", [False, True])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_backend_equals_step_loop(backend, straight_through, detach_recurrence, T):
    torch.manual_seed(0)
    cell = SRC(
        6,
        9,
        weight_gain=4.0,
        bias_init=-5.0,
        straight_through=straight_through,
        detach_recurrence=detach_recurrence,
    ).double()
    x = (torch.rand(3, T, 6, dtype=torch.float64) < 0.3).double()
    # Away from rest, so that the state gradients see the whole hs gate, not its flat tail.
    state = SRCState(*(t + 0.3 * torch.rand_like(t) for t in cell.init_state(3)))
    y1, s1, g1 = _run_cell(cell, x, backend, state)
    y2, s2, g2 = _run_cell(cell, x, "naive", state)
    if T == 63:
        assert y1.abs().max() > 0.5
    torch.testing.assert_close(y1, y2, atol=1e-10, rtol=0)
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    for a, b in zip(g1, g2, strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_clamp_holds_after_optimiser_steps():
    torch.manual_seed(0)
    cell = SRC(4, 8)
    opt = torch.optim.SGD(cell.parameters(), lr=10.0)
    x = torch.rand(2, 20, 4)
    for _ in range(5):
        opt.zero_grad()
        y, _ = cell(x)
        # Pushes b_h upwards: more activity.
        (-(y.sum()) - cell.effective_bias_h.sum()).backward()
        opt.step()
    assert cell.bias_h.max() > -4.0
    assert cell.effective_bias_h.max() <= -4.0
    assert cell.bias_h.grad is not None and cell.bias_h.grad.abs().max() > 0


def test_constructor_errors():
    with pytest.raises(ValueError, match="alpha_i"):
        SRC(2, 3, alpha_i=1.5)
    with pytest.raises(ValueError, match="bias_init"):
        SRC(2, 3, bias_init=-3.0)
    with pytest.raises(ValueError, match="recurrent-only"):
        SRC(2, 3, mode="parallel")
    with pytest.raises(ValueError, match="SRC: unknown backend 'cuda'; expected one of"):
        SRC(2, 3, backend="cuda")


def test_spike_stats_counts_onsets():
    s = torch.zeros(2, 10, 3)
    s[0, 2:4, 0] = 0.8
    s[0, 7, 0] = 0.5
    s[1, 0:2, 1] = 0.9
    stats = spike_stats([s, torch.zeros(2, 10, 4)])
    assert stats["layer0/spikes_per_sample"] == 1.5
    assert stats["layer0/firing_rate"] == pytest.approx(3 / 60)
    assert stats["layer0/silent_fraction"] == pytest.approx(1 / 3)
    assert stats["layer1/silent_fraction"] == 1.0 and stats["spikes_per_sample"] == 1.5
    with pytest.raises(ValueError, match=r"\(B, T, N\)"):
        spike_stats(torch.zeros(3, 4))


def test_raster_plot_writes_png(tmp_path):
    y, _ = SRC(4, 10, weight_gain=5.0)((torch.rand(2, 60, 4) < 0.5).float())
    path = tmp_path / "raster.png"
    raster_plot(y, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
