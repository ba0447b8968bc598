import pytest
import torch

from memrnn.models.spiking import SpikingConfig, SpikingNetwork, SpikingState
from memrnn.tasks.images import SpikingDigits


def test_forward_equals_steps_and_carried_state():
    torch.manual_seed(0)
    net = SpikingNetwork(8, [6, 5], 3, weight_gain=4.0).double()
    x = (torch.rand(2, 40, 8, dtype=torch.float64) < 0.4).double()
    out, state = net(x)
    assert out.shape == (2, 40, 3) and isinstance(state, SpikingState)
    s, steps = None, []
    for t in range(40):
        o, s = net.step(x[:, t], s)
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, 1), out, atol=1e-10, rtol=0)
    first, mid = net(x[:, :17])
    second, end = net(x[:, 17:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), out, atol=1e-10, rtol=0)
    torch.testing.assert_close(end.readout, state.readout, atol=1e-10, rtol=0)


def test_gradients_reach_every_layer_of_a_deep_network():
    torch.manual_seed(0)
    net = SpikingConfig(
        16, 4, hidden_sizes=[24, 24, 24, 24], cell_kwargs={"weight_gain": 5.0}
    ).build()
    x = (torch.rand(4, 80, 16) < 0.3).float()
    out, _ = net(x)
    out[:, -1].pow(2).sum().backward()
    for layer in net.layers:
        assert layer.weight_s.grad.abs().sum() > 0
        assert layer.bias_h.grad.abs().sum() > 0
    stats = net.spike_stats()
    assert stats["layer3/firing_rate"] > 0


def test_short_training_lowers_loss():
    torch.manual_seed(0)
    task = SpikingDigits(n_steps=20, n_empty=2)
    net = SpikingNetwork(64, [32], 10, weight_gain=4.0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    batch = task.batch(32, "train", torch.Generator().manual_seed(0))
    losses = []
    for _ in range(15):
        loss = task.loss(net(batch.x)[0], batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _train_digits(steps: int, lr: float, seed: int = 0) -> float:
    """Test accuracy of a 2 x 64 SRC network after `steps` Adam steps (batch 64) on digits with
    the encoding shortened to 5 + 40 steps; default init and readout."""
    torch.manual_seed(seed)
    task = SpikingDigits(n_steps=40, n_empty=5)
    net = SpikingNetwork(64, [64, 64], 10)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = task.batch(64, "train", gen)
        loss = task.loss(net(batch.x)[0], batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    correct, n = 0.0, 0
    with torch.no_grad():
        for b in task.iter_split("test", 200):
            correct += task.metrics(net(b.x)[0], b)["accuracy"] * len(b.y)
            n += len(b.y)
    return correct / n


def test_digits_learns_well_above_chance():
    # 150 steps at lr 0.01 (~6 s on an idle core). Measured test accuracy, seeds 0/1/2:
    # 0.46 / 0.45 / 0.36; chance is 0.1.
    assert _train_digits(150, lr=0.01) >= 0.3


@pytest.mark.slow
def test_digits_longer_run():
    # 500 steps at lr 0.003 (~20 s on an idle core). Measured test accuracy (seed 0): 0.56.
    # (At lr 0.01, 500 steps reached only 0.42: the rate is too high for longer runs.)
    assert _train_digits(500, lr=0.003) >= 0.45
