"""The Transformer unit: the contract with several heads and windows, attention against a plain
softmax loop, what a window forgets, rotary positions, the cache, and its errors.

The registry-driven tests (test_contract, test_lengths, ...) run the registered example (one
head, full attention); here the same checks run with 2 heads and with windows of 1 and 3.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from memrnn.export import StepModule, example_inputs, export_step
from memrnn.inference import generate, stream
from memrnn.models import create_model
from memrnn.units import Transformer, TransformerState
from memrnn.units import transformer as transformer_module

_spec = importlib.util.spec_from_file_location(
    "unit_contract", Path(__file__).with_name("test_contract.py")
)
contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(contract)

VARIANTS = [
    pytest.param({"n_heads": 2}, id="full-2heads"),
    pytest.param({"n_heads": 2, "window": 3}, id="window3-2heads"),
    pytest.param({"n_heads": 1, "window": 1}, id="window1"),
]


def _unit(kwargs: dict, dtype: torch.dtype = torch.float64, D: int = 3, H: int = 4) -> Transformer:
    torch.manual_seed(0)
    return Transformer(D, H, **kwargs).to(dtype)


@pytest.mark.parametrize(
    ("kwargs", "T"),
    [pytest.param(*v.values, T, id=f"{v.id}-{T}") for v in VARIANTS for T in (1, 7, 63)]
    + [pytest.param(*v.values, 300, id=f"{v.id}-300", marks=pytest.mark.slow) for v in VARIANTS],
)
def test_every_way_agrees_in_float64(kwargs: dict, T: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Query blocks of 16 steps, so that T = 63 crosses several of them (as T > 256 does with
    # the default QUERY_BLOCK).
    monkeypatch.setattr(transformer_module, "QUERY_BLOCK", 16)
    unit = _unit(kwargs)
    x = contract._draw_input(unit, T, torch.float64)
    ways = contract._ways(unit, T)
    results = {how: contract._run(unit, x, how) for how in ways}
    for how in ways[1:]:
        contract._assert_same(results[ways[0]], results[how], 1e-10, f"{kwargs} {how}")


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_an_explicit_initial_state_agrees(kwargs: dict) -> None:
    unit = _unit(kwargs)
    x = contract._draw_input(unit, 7, torch.float64, seed=1)
    # A cache that already holds 5 steps (from a first call), made a leaf with gradients.
    _, state = unit(torch.randn(2, 5, 3, dtype=torch.float64))
    state = TransformerState(
        state.k.detach().requires_grad_(), state.v.detach().requires_grad_(), state.steps
    )
    ways = contract._ways(unit, 7)
    results = {how: contract._run(unit, x, how, state) for how in ways}
    for how in ways[1:]:
        contract._assert_same(results[ways[0]], results[how], 1e-10, f"{kwargs} {how}")


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
@pytest.mark.parametrize("kwargs", VARIANTS)
def test_a_padded_batch_equals_each_sequence_alone(kwargs: dict, mode: str) -> None:
    unit = _unit(kwargs)
    unit.mode = mode
    lengths = [5, 2, 1, 4]
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    y, state = unit(x, lengths=torch.tensor(lengths))
    for i, n in enumerate(lengths):
        yi, si = unit(x[i : i + 1, :n])
        torch.testing.assert_close(y[i : i + 1, :n], yi, atol=1e-12, rtol=1e-12)
        slots = si.k.shape[2]
        for got, want in ((state.k, si.k), (state.v, si.v)):
            got = got[i : i + 1]
            assert not bool(got[:, :, : got.shape[2] - slots].any())
            torch.testing.assert_close(got[:, :, got.shape[2] - slots :], want)
        assert int(state.steps[i]) == n
        # The state continues the sequence as if it had been run alone.
        y_next, _ = unit(x[i : i + 1, :2], TransformerState(*(t[i : i + 1] for t in state)))
        y_alone, _ = unit(x[i : i + 1, :2], si)
        torch.testing.assert_close(y_next, y_alone, atol=1e-12, rtol=1e-12)


def _reference(unit: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Attention by its definition: a loop over queries, softmax over the allowed keys."""
    B, T, _ = x.shape
    nh, dh, W = unit.n_heads, unit.d_head, unit.window
    q, k, v = unit.qkv(x).view(B, T, 3, nh, dh).unbind(2)  # (B, T, heads, d_head) each
    half = dh // 2
    freq = unit.rope_base ** (-torch.arange(half, dtype=torch.float64) / max(1, half))

    def rot(z: torch.Tensor, t: int) -> torch.Tensor:
        c, s = torch.cos(t * freq), torch.sin(t * freq)
        a, b = z[..., :half], z[..., half : 2 * half]
        return torch.cat([a * c - b * s, a * s + b * c, z[..., 2 * half :]], dim=-1)

    out = torch.zeros(B, T, nh, dh, dtype=x.dtype)
    for t in range(T):
        keys = range(0 if W is None else max(0, t - W + 1), t + 1)
        scores = torch.stack(
            [(rot(q[:, t], t) * rot(k[:, s], s)).sum(-1) / math.sqrt(dh) for s in keys], -1
        )  # (B, heads, keys)
        weights = torch.softmax(scores, dim=-1)
        out[:, t] = sum(weights[..., i : i + 1] * v[:, s] for i, s in enumerate(keys))
    return unit.out_proj(out.reshape(B, T, nh * dh))


@pytest.mark.parametrize("window", [None, 1, 4])
def test_attention_equals_its_definition(window: int | None) -> None:
    unit = _unit({"n_heads": 2, "window": window}, D=3, H=8)
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    y, _ = unit(x)
    with torch.no_grad():
        torch.testing.assert_close(y.detach(), _reference(unit, x), atol=1e-12, rtol=1e-12)


def test_a_window_forgets_what_lies_before_it_and_full_attention_does_not() -> None:
    x = torch.randn(1, 12, 3, dtype=torch.float64)
    changed = x.clone()
    changed[0, 2] += 1.0
    for window, blind in ((4, range(6, 12)), (None, range(0))):
        unit = _unit({"n_heads": 2, "window": window})
        y, _ = unit(x)
        y2, _ = unit(changed)
        assert torch.equal(y[0, :2], y2[0, :2])
        for t in range(2, 12):
            assert torch.equal(y[0, t], y2[0, t]) == (t in blind), (window, t)


def test_rotary_scores_depend_on_relative_positions_only() -> None:
    # Starting from an empty cache at step 1000 gives what starting at step 0 gives.
    unit = _unit({"n_heads": 2})
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    y0, _ = unit(x)
    late = unit.init_state(2, dtype=torch.float64)._replace(steps=torch.full((2,), 1000))
    y1, s1 = unit(x, late)
    torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-12)
    assert s1.steps.tolist() == [1009, 1009]


def test_the_cache_grows_with_full_attention_and_not_with_a_window() -> None:
    full = _unit({"n_heads": 2}, torch.float32)
    windowed = _unit({"n_heads": 1, "window": 5}, torch.float32)
    x = torch.randn(3, 8, 3)
    _, s_full = full(x)
    _, s_win = windowed(x)
    assert s_full.k.shape == (3, 2, 8, 2) and s_win.k.shape == (3, 1, 5, 4)
    _, s_full = full.step(x[:, 0], s_full)
    _, s_win = windowed.step(x[:, 0], s_win)
    assert s_full.k.shape[2] == 9 and s_win.k.shape[2] == 5
    assert s_full.steps.tolist() == s_win.steps.tolist() == [9, 9, 9]
    # The first steps of a window leave the slots in front of them empty.
    _, early = windowed(x[:, :2])
    assert not bool(early.k[:, :, :3].any()) and bool(early.k[:, :, 3:].all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_heads": 3}, r"`hidden_size` \(4\) must be a multiple of `n_heads` \(3\)"),
        ({"n_heads": 0}, "`n_heads` must be a positive int"),
        ({"window": 0}, "`window` must be a positive int"),
        ({"window": 2.5}, "`window` must be a positive int"),
        ({"rope_base": 1}, "`rope_base` must be a number > 1"),
        ({"mode": "chunked"}, "unknown mode 'chunked'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Transformer(3, 4, **kwargs)


def test_bad_states_are_refused() -> None:
    unit = Transformer(3, 4, n_heads=2, window=3)
    x = torch.randn(2, 5, 3)
    _, state = unit(x)
    with pytest.raises(TypeError, match="must be a TransformerState"):
        unit(x, tuple(state))
    with pytest.raises(ValueError, match=r"state.k has shape \(2, 2, 4, 2\); expected \(2, 2, 3"):
        unit(x, state._replace(k=torch.zeros(2, 2, 4, 2)))
    with pytest.raises(ValueError, match=r"state.v has shape .*expected \(2, 2, 3, 2\)"):
        unit.step(x[:, 0], state._replace(v=torch.zeros(2, 2, 2, 2)))
    with pytest.raises(ValueError, match="steps has dtype torch.float32; expected int64"):
        unit(x, state._replace(steps=torch.zeros(2)))
    with pytest.raises(ValueError, match=r"state.steps must be a \(2,\) int64 tensor"):
        unit(x, state._replace(steps=torch.zeros(3, dtype=torch.long)))
    full = Transformer(3, 4, n_heads=2)
    _, grown = full(x)
    with pytest.raises(
        ValueError, match=r"state.v has shape \(2, 2, 3, 2\); expected \(2, 2, S, 2\)"
    ):
        full(x, grown._replace(v=grown.v[:, :, :3]))


def test_networks_generate_and_stream() -> None:
    torch.manual_seed(0)
    for name in ("transformer-small", "transformer-window-small"):
        model = create_model(
            name, input_size=11, output_size=11, input_kind="tokens", head="next-token", d_model=8
        ).eval()
        ids = generate(model, torch.randint(11, (2, 4)), 6, temperature=0)
        assert ids.shape == (2, 10)
        # Greedy generation equals reading the whole sequence in one forward pass.
        logits, _ = model(ids[:, :-1])
        assert torch.equal(logits.argmax(-1)[:, 3:], ids[:, 4:])
        real = create_model(name, input_size=2, output_size=3, head="sequence", d_model=8).eval()
        values = torch.randn(1, 5, 2)
        outs = torch.stack(list(stream(real, values)), dim=1)
        torch.testing.assert_close(outs, real(values)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_network_with_a_growing_cache_exports() -> None:
    torch.manual_seed(0)
    model = create_model("transformer-small", input_size=2, output_size=3, d_model=8).eval()
    _export_agrees(model)


def test_a_unit_with_a_growing_cache_exports() -> None:
    # The cache length is a dynamic dim: the program runs from an empty cache on.
    _export_agrees(_unit({"n_heads": 2}, torch.float32))


def _export_agrees(model: torch.nn.Module) -> None:
    program = export_step(model, batch_size=2)
    step = StepModule(model)
    args = list(example_inputs(step, 3))
    assert args[1].shape[2] == 0
    for _ in range(3):
        got, want = program.module()(*args), step(*args)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        args = [torch.randn_like(args[0]), *want[1:]]
    assert args[1].shape[2] == 3
