import pytest
import torch

from memrnn.tasks.encoding import latency_encode, rate_encode


def test_rate_encode_shape_rate_and_seed():
    x = torch.tensor([[0.0, 0.5, 1.0]]).repeat(200, 1)
    s = rate_encode(x, generator=torch.Generator().manual_seed(0))
    assert s.shape == (200, 220, 3) and set(s.unique().tolist()) <= {0.0, 1.0}
    assert s[:, :20].sum() == 0
    rates = s[:, 20:].mean(dim=(0, 1))
    torch.testing.assert_close(rates, torch.tensor([0.0, 0.125, 0.25]), atol=0.01, rtol=0)
    again = rate_encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_latency_encode_one_spike_earlier_when_brighter():
    s = latency_encode(torch.tensor([[1.0, 0.5, 0.1, 0.0]]), n_steps=11, n_empty=2)
    assert s.shape == (1, 13, 4)
    assert s[0, :, :3].sum(0).tolist() == [1.0, 1.0, 1.0] and s[0, :, 3].sum() == 0
    first = s[0, :, :3].argmax(0).tolist()
    assert first == [2, 7, 11]


def test_encoding_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rate_encode(torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="features"):
        latency_encode(torch.rand(2, 3, 4))
