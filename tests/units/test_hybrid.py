import pytest
import torch

import memrnn.units  # noqa: F401
from memrnn.units.hybrid import Hybrid, HybridState, alternating
from memrnn.units.lru import LRUState
from memrnn.units.mru import BMRU, BMRUState


@pytest.mark.parametrize("ssm", ["lru", "bmru"])
@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_parallel_equals_recurrent(ssm, combine):
    torch.manual_seed(0)
    layer = Hybrid(3, 6, output_size=5, ssm=ssm, combine=combine).double()
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    y_par, s_par = layer(x)
    layer.mode = "recurrent"
    y_rec, s_rec = layer(x)
    assert y_par.shape == (2, 40, 5)
    torch.testing.assert_close(y_rec, y_par, rtol=1e-10, atol=1e-10)
    for a, b in zip(s_rec, s_par, strict=True):
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb, rtol=1e-10, atol=1e-10)


def test_state_is_a_tuple_of_the_parts_states():
    layer = Hybrid(3, 6)
    state = layer.init_state(4)
    assert isinstance(state, HybridState) and isinstance(state.mru, BMRUState)
    assert isinstance(state.ssm, LRUState)
    y, final = layer(torch.randn(4, 5, 3), state)
    assert y.shape == (4, 5, 6) and isinstance(final, HybridState)


def test_sum_is_the_sum_of_the_branches():
    layer = Hybrid(3, 4, ssm="bmru")
    x = torch.randn(2, 9, 3)
    y, _ = layer(x)
    torch.testing.assert_close(y, layer.mru(x)[0] + layer.ssm(x)[0])


def test_concat_projects_the_concatenation():
    layer = Hybrid(3, 4, output_size=7, combine="concat")
    x = torch.randn(2, 9, 3)
    y, _ = layer(x)
    expected = layer.proj(torch.cat([layer.mru(x)[0], layer.ssm(x)[0]], dim=-1))
    torch.testing.assert_close(y, expected)
    assert layer.mru.output_size == 4 and y.shape == (2, 9, 7)


def test_mode_is_set_on_both_parts_and_built_units_are_accepted():
    layer = Hybrid(3, 4, mru=BMRU(3, 4), ssm="cmru", mode="recurrent")
    assert layer.mru.mode == layer.ssm.mode == "recurrent"
    layer.mode = "parallel"
    assert layer.mru.mode == layer.ssm.mode == "parallel"


def test_recurrent_only_branch_makes_the_hybrid_recurrent_only():
    layer = Hybrid(3, 4, ssm="lstm")
    assert layer.modes == ("recurrent",) and layer.mode == "recurrent"
    with pytest.raises(ValueError, match="unknown mode 'parallel'"):
        layer.mode = "parallel"


def test_alternating():
    assert alternating(["bmru", "lru"], 5) == ["bmru", "lru", "bmru", "lru", "bmru"]
    assert alternating(("bmru",), 2) == ["bmru", "bmru"]


def test_errors():
    with pytest.raises(ValueError, match=r"unknown combine 'mean'.*sum.*concat"):
        Hybrid(3, 4, combine="mean")
    with pytest.raises(ValueError, match=r"unknown ssm unit 'nope'; expected one of"):
        Hybrid(3, 4, ssm="nope")
    with pytest.raises(ValueError, match="reads 5 features; expected input_size=3"):
        Hybrid(3, 4, mru=BMRU(5, 4))
    with pytest.raises(ValueError, match="both branches to output 4 features"):
        Hybrid(3, 4, mru=BMRU(3, 4, output_size=2))
    with pytest.raises(ValueError, match="apply to a unit name"):
        Hybrid(3, 4, mru=BMRU(3, 4), mru_kwargs={"epsilon": 1.0})
    with pytest.raises(ValueError, match=r"unknown unit 'x'"):
        alternating(["bmru", "x"], 2)
    with pytest.raises(ValueError, match="non-empty list"):
        alternating([], 2)
    with pytest.raises(ValueError, match="positive int"):
        alternating(["bmru"], 0)
    layer = Hybrid(3, 4)
    with pytest.raises(TypeError, match="must be a HybridState"):
        layer(torch.randn(2, 5, 3), layer.mru.init_state(2))
    bad = HybridState(BMRUState(torch.zeros(3, 4)), layer.ssm.init_state(2))
    with pytest.raises(ValueError, match=r"state.h has shape \(3, 4\); expected \(2, 4\)"):
        layer(torch.randn(2, 5, 3), bad)
