"""αCMRU (our reconstruction): reduces to the CMRU at unit write sizes, writes real amounts.

The parallel == step == chunked contract (outputs, states, gradients) is checked for it with
every other registered unit in test_contract.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from memrnn.units import CMRU, UNITS, AlphaCMRU
from memrnn.units.acmru import UNIT_WRITE_BIAS


def test_registered_and_documented_as_a_reconstruction():
    import memrnn.units.acmru as module

    assert UNITS["acmru"] is AlphaCMRU
    assert "OUR RECONSTRUCTION" in module.__doc__


def test_unit_write_sizes_give_the_cmru():
    torch.manual_seed(0)
    alpha = AlphaCMRU(3, 5).double()
    cmru = CMRU(3, 5).double()
    cmru.load_state_dict({k: v for k, v in alpha.state_dict().items() if "write_size" not in k})
    with torch.no_grad():
        alpha.write_size.weight.zero_()
        alpha.write_size.bias.fill_(UNIT_WRITE_BIAS)  # in float64, not a rounded float32
    assert math.isclose(torch.nn.functional.softplus(torch.tensor(UNIT_WRITE_BIAS)).item(), 1.0)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    y_a, s_a = alpha(x)
    y_c, s_c = cmru(x)
    torch.testing.assert_close(y_a, y_c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_a.h, s_c.h, rtol=1e-12, atol=1e-12)


def test_write_sizes_follow_the_input():
    torch.manual_seed(0)
    unit = AlphaCMRU(3, 5, threshold="constant").double()
    with torch.no_grad():
        unit.beta.fill_(0.0)  # every step writes
    x = torch.randn(1, 1, 3, dtype=torch.float64)
    h0 = unit.init_state(1).h
    _, state = unit(x)
    c = unit.candidate(x[:, 0])
    a = torch.nn.functional.softplus(unit.write_size(x[:, 0]))
    torch.testing.assert_close(state.h, h0 + torch.sign(c) * a)


def test_bad_epsilon_is_refused():
    with pytest.raises(ValueError, match="`epsilon` must be a number in \\[0, 1\\]"):
        AlphaCMRU(3, 4, epsilon=2.0)
