from typing import NamedTuple

import pytest
import torch
from torch import Tensor

from memrnn.models import Block
from memrnn.models.block import GLUMLP, build_unit
from memrnn.units import UNITS, RecurrentUnit

pytestmark = pytest.mark.usefixtures("one_thread")


class EMAState(NamedTuple):
    h: Tensor  # (B, H)


class EMA(RecurrentUnit):
    """h_t = 0.9 h_{t-1} + W x_t; emits its hidden width (no output_size argument)."""

    modes = ("recurrent",)

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.w = torch.nn.Linear(input_size, hidden_size)

    def init_state(self, batch_size, device=None, dtype=None):
        return EMAState(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def _step(self, x_t, state):
        h = 0.9 * state.h + self.w(x_t)
        return h, EMAState(h)


@pytest.fixture
def ema(monkeypatch):
    monkeypatch.setitem(UNITS, "test-ema", EMA)
    EMA.example_kwargs = {}
    return "test-ema"


def _stepwise(block, x):
    state = block.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for x_t in x.unbind(1):
        y_t, state = block.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("mlp", [True, False])
def test_block_step_equals_forward(ema, norm, mlp):
    torch.manual_seed(0)
    block = Block(8, ema, hidden_size=5, norm=norm, mlp=mlp).double().eval()
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    y, state = block(x)
    y_step, state_step = _stepwise(block, x)
    assert y.shape == (3, 11, 8)
    torch.testing.assert_close(y, y_step, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state.h, state_step.h, atol=1e-10, rtol=1e-10)


def test_block_projects_units_without_output_size(ema):
    block = Block(8, ema, hidden_size=5)
    assert isinstance(block.proj, torch.nn.Linear) and block.proj.in_features == 5
    assert block.mlp is not None and Block(8, ema, mlp=False).mlp is None


def test_block_passes_output_size_when_the_unit_takes_it():
    if "bmru" not in UNITS:
        pytest.skip("bmru not registered")
    block = Block(8, "bmru", hidden_size=12)
    assert isinstance(block.proj, torch.nn.Identity) and block.unit.output_size == 8


def test_block_chunked_state_carries(ema):
    torch.manual_seed(1)
    block = Block(6, ema).double().eval()
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    y, _ = block(x)
    y1, s = block(x[:, :4])
    y2, _ = block(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-10, rtol=1e-10)


def test_glu_mlp_shape():
    assert GLUMLP(6, ratio=3.0)(torch.randn(2, 4, 6)).shape == (2, 4, 6)


def test_unknown_unit_lists_close_matches():
    if "bmru" not in UNITS:
        pytest.skip("bmru not registered")
    with pytest.raises(ValueError, match="did you mean bmru"):
        build_unit("bmr", 4, 4)


def test_unknown_norm():
    name = next(iter(UNITS))
    with pytest.raises(ValueError, match="unknown norm 'batch'"):
        Block(4, name, norm="batch", unit_kwargs=UNITS[name].example_kwargs)
