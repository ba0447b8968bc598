"""Every unit, in every mode: an empty batch (B = 0) gives empty outputs and states, and a
state of the wrong dtype or device is refused with a ValueError naming `state`."""

from __future__ import annotations

import pytest
import torch

from memrnn.units import UNITS


def _unit(name: str):
    cls = UNITS[name]
    torch.manual_seed(0)
    return cls(3, 5, **cls.example_kwargs)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_an_empty_batch_gives_empty_outputs(name: str) -> None:
    unit = _unit(name)
    for mode in unit.modes:
        unit.mode = mode
        reference, _ = unit(torch.randn(2, 4, 3))
        y, state = unit(torch.randn(0, 4, 3))
        assert y.shape == (0, *reference.shape[1:]), mode
        for tensor in torch.utils._pytree.tree_leaves(state):
            assert tensor.shape[0] == 0, mode
    y_t, _ = unit.step(torch.randn(0, 3))
    assert y_t.shape == (0, unit.output_size)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_state_of_another_dtype_is_refused(name: str) -> None:
    unit = _unit(name)
    wrong = unit.init_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`state`\.\w+ has dtype torch\.(float|complex)"):
        unit(torch.randn(2, 4, 3), wrong)
    with pytest.raises(ValueError, match=r"`state`\.\w+ has dtype"):
        unit.step(torch.randn(2, 3), wrong)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_state_on_another_device_is_refused(name: str) -> None:
    unit = _unit(name)
    elsewhere = unit.init_state(2, device="meta")
    with pytest.raises(ValueError, match=r"`state`\.\w+ is on meta but the input is on cpu"):
        unit(torch.randn(2, 4, 3), elsewhere)


def test_a_float64_unit_keeps_float64_states() -> None:
    unit = _unit("brc").double()
    y, state = unit(
        torch.randn(2, 4, 3, dtype=torch.float64), unit.init_state(2, dtype=torch.float64)
    )
    assert y.dtype == state.h.dtype == torch.float64
