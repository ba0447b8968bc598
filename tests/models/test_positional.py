"""Positional codes and block options: parallel == step == chunked, errors, config round trip."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from memrnn.models import Block, ModelConfig, Network, build_model, config_for_task, model_config
from memrnn.models.positional import PositionalCode, sinusoidal_code
from memrnn.tasks.registry import create_task
from memrnn.train.config import resolve_config
from memrnn.units import is_no_weight_decay

T, SPLIT = 11, 4

OPTIONS = {
    "sinusoidal-blocks": {"positional": "sinusoidal", "positional_size": 6},
    "sinusoidal-encoder": {"positional": "sinusoidal", "positional_at": "encoder"},
    "learned-blocks": {"positional": "learned", "positional_max_len": 32},
    "learned-encoder": {"positional": "learned", "positional_at": "encoder"},
    "start-blocks": {"positional": "start"},
    "start-encoder": {"positional": "start", "positional_at": "encoder"},
    "output-gate": {"output_gate": True},
    "residual-scale": {"residual_scale": True},
    "conv-1": {"conv_kernel": 1},
    "conv-4": {"conv_kernel": 4},
    "all": {
        "positional": "sinusoidal",
        "output_gate": True,
        "residual_scale": True,
        "conv_kernel": 3,
    },
}
UNITS_UNDER_TEST = ("bmru", "cmru", "lru")


def _model(unit: str, options: dict[str, Any], head: str = "sequence") -> Network:
    torch.manual_seed(0)
    cfg = ModelConfig(
        input_size=3, output_size=2, unit=unit, head=head, d_model=6, n_layers=2, **options
    )
    model = Network(cfg).double()
    # Non-trivial values for parameters that start at a constant (gate bias, scales, table).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate.bias", "scale", "table")):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _flatten(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state] if state.is_floating_point() or state.is_complex() else []
    return [t for field in state for t in _flatten(field)]


def _loss(y: Tensor, state: Any) -> Tensor:
    total = (y**2).sum()
    for t in _flatten(state):
        total = total + ((t.abs() ** 2) if t.is_complex() else t**2).sum()
    return total


def _run(model: Network, x: Tensor, how: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if how == "parallel":
        y, state = model(x)
    elif how == "chunked":
        y1, carried = model(x[:, :SPLIT])
        y2, state = model(x[:, SPLIT:], carried)
        y = torch.cat([y1, y2], dim=1)
    else:
        outs, state = [], None
        for t in range(x.shape[1]):
            out, state = model.step(x[:, t], state)
            outs.append(out)
        y = torch.stack(outs, dim=1)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(y, state), [x, *params], allow_unused=True)
    return y.detach(), [t.detach() for t in _flatten(state)], list(grads)


@pytest.mark.parametrize("unit", UNITS_UNDER_TEST)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_parallel_step_and_chunked_agree(option: str, unit: str) -> None:
    model = _model(unit, OPTIONS[option])
    x = torch.randn(2, T, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _run(model, x, "parallel")
    for how in ("step", "chunked"):
        y, state, grads = _run(model, x, how)
        torch.testing.assert_close(y, ref[0], rtol=1e-10, atol=1e-10)
        for a, b in zip(state, ref[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, ref[2], strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                atol = 1e-10 * max(1.0, b.abs().max().item())
                torch.testing.assert_close(a, b, rtol=1e-10, atol=atol)


@pytest.mark.parametrize("option", ["sinusoidal-blocks", "learned-encoder", "all"])
def test_every_new_parameter_gets_a_gradient(option: str) -> None:
    model = _model("bmru", OPTIONS[option])
    y, _ = model(torch.randn(2, T, 3, dtype=torch.float64))
    y.pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_the_code_is_appended_to_every_unit_input() -> None:
    model = _model("bmru", {"positional": "sinusoidal", "positional_size": 6})
    seen = []
    for block in model.blocks:
        assert block.unit.input_size == 6 + 6
        block.unit.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    _, state = model(torch.ones(2, 5, 3, dtype=torch.float64))
    model(torch.ones(2, 2, 3, dtype=torch.float64), state)
    code = sinusoidal_code(torch.arange(7), 6, torch.float64)  # (T, P)
    for inputs in seen[:2]:
        torch.testing.assert_close(inputs[..., 6:], code[:5].expand(2, 5, 6))
    # The continuation starts at the position where the first call stopped.
    torch.testing.assert_close(seen[2][..., 6:], code[5:].expand(2, 2, 6))
    assert _model("bmru", {}).blocks[0].unit.input_size == 6


def test_start_flag_is_one_at_the_first_step_only() -> None:
    code = PositionalCode("start")
    positions = torch.tensor([[0, 1, 2, 100_000]])
    assert code.size == 1
    assert code(positions, torch.float32)[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sinusoidal_code_values() -> None:
    p = sinusoidal_code(torch.tensor([3]), 4, torch.float64)[0]
    # w_0 = 1, w_1 = 10000^(-1/2) = 0.01.
    expected = [math.sin(3.0), math.sin(0.03), math.cos(3.0), math.cos(0.03)]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64))


def test_learned_table_starts_as_the_sinusoidal_code() -> None:
    code = PositionalCode("learned", 8, max_len=10)
    torch.testing.assert_close(
        code.table.detach(), sinusoidal_code(torch.arange(10), 8, code.table.dtype)
    )


def test_learned_table_refuses_positions_beyond_its_length() -> None:
    model = _model("bmru", {"positional": "learned", "positional_max_len": 8})
    with pytest.raises(ValueError, match="positional_max_len.*= 8"):
        model(torch.randn(1, 9, 3, dtype=torch.float64))
    _, state = model(torch.randn(1, 8, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="step 8 is beyond.*positional_max_len"):
        model.step(torch.randn(1, 3, dtype=torch.float64), state)


def test_output_gate_starts_open_and_residual_scale_is_not_decayed() -> None:
    block = Block(8, "bmru", output_gate=True, residual_scale=True)
    assert torch.all(block.gate.bias == 4.0)
    assert torch.all(block.scale == 1.0) and is_no_weight_decay(block.scale)


def test_conv_state_carries_the_last_inputs() -> None:
    model = _model("bmru", {"conv_kernel": 4})
    state = model.init_state(2)
    assert state.layers[0].conv.shape == (2, 3, 6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"positional": "cosine"}, "unknown positional 'cosine'"),
        ({"positional_at": "head"}, "unknown positional_at 'head'"),
        ({"positional_size": 3}, "`positional_size` must be an even int"),
        ({"positional_size": 0}, "`positional_size` must be an even int"),
        ({"positional_max_len": 0}, "`positional_max_len` must be a positive int"),
        ({"conv_kernel": -1}, "`conv_kernel` must be an int >= 0"),
        ({"conv_kernel": 2.5}, "`conv_kernel` must be an int >= 0"),
        ({"output_gate": "yes"}, "`output_gate` must be true or false"),
        ({"residual_scale": 1}, "`residual_scale` must be true or false"),
        ({"arch": "direct", "positional": "start"}, "`positional` is an option of arch='stack'"),
        ({"arch": "direct", "conv_kernel": 2}, "`conv_kernel` is an option of arch='stack'"),
    ],
)
def test_bad_values_name_the_field(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(input_size=1, output_size=1, **options)


def test_block_and_code_errors() -> None:
    with pytest.raises(ValueError, match="`conv_kernel` must be an int >= 0"):
        Block(4, "bmru", conv_kernel=-2)
    with pytest.raises(ValueError, match="`p` must be given"):
        Block(4, "bmru", extra_input=2)(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="`p_t` must be None"):
        Block(4, "bmru").step(torch.randn(1, 4), None, torch.randn(1, 2))
    with pytest.raises(ValueError, match="unknown positional 'none'"):
        PositionalCode("none")
    with pytest.raises(ValueError, match="`positional_size` must be an even int"):
        PositionalCode("sinusoidal", 5)


def test_options_come_from_the_cli_and_survive_the_checkpoint_json() -> None:
    # `--model.<field> value` tokens, as the CLI passes them, parsed as YAML scalars.
    train = resolve_config(
        overrides={
            "model": "bmru-small",
            "task": "flip-flop",
            "model.positional": "sinusoidal",
            "model.positional_size": "8",
            "model.output_gate": "true",
            "model.conv_kernel": "3",
        }
    )
    task = create_task("flip-flop", train_len=9)
    cfg = config_for_task(train.model, task, **train.model_overrides)
    assert (cfg.positional, cfg.positional_size, cfg.output_gate, cfg.conv_kernel) == (
        "sinusoidal",
        8,
        True,
        3,
    )
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    again = build_model(ModelConfig.from_json(cfg.to_json())).double().eval()
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 9, task.input_size, dtype=torch.float64)
    torch.testing.assert_close(again(x)[0], model(x)[0])


def test_registry_overrides_take_the_options() -> None:
    cfg = model_config("cmru-small", 2, 3, positional="start", residual_scale=True)
    assert cfg.positional == "start" and cfg.residual_scale


def test_lengths_end_the_state_and_the_positions_at_each_sequence_end() -> None:
    model = _model("bmru", OPTIONS["all"]).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 3, dtype=torch.float64, generator=gen)
    more = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen)
    _, state = model(x, lengths=torch.tensor([8, 5]))
    y, _ = model(more, state)
    for b, n in enumerate((8, 5)):
        _, alone = model(x[b : b + 1, :n])
        ref, _ = model(more[b : b + 1], alone)
        torch.testing.assert_close(y[b : b + 1], ref, rtol=1e-10, atol=1e-10)


def test_empty_sequences_are_refused_before_the_conv() -> None:
    model = _model("bmru", {"conv_kernel": 4})
    with pytest.raises(ValueError, match="T = 0 time steps"):
        model(torch.randn(1, 0, 3, dtype=torch.float64))
