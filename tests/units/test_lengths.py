"""Variable lengths, for every registered unit and mode: a padded batch equals each sequence alone.

A batch of sequences of different lengths, padded with random values (so that a leak of the
padding would show), is run once with `lengths`; each sequence is also run alone, unpadded.
Outputs within each length, final states, and the gradients of a loss on both (inputs within
each length, every parameter) must agree in float64.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import memrnn.units  # noqa: F401 - registers every unit module
from memrnn.models import create_model
from memrnn.scan import linear_scan
from memrnn.units import BMRU, UNITS

D, H = 3, 4
LENGTHS = [5, 2, 5, 1, 3]  # repeated, shortest and full lengths; T = 5
TOL = 1e-10


def _flatten(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for part in state for t in _flatten(part)]


def _loss(y: Tensor, state: Any, n: int | None = None) -> Tensor:
    y = y if n is None else y[:, :n]
    total = (y**2).sum()
    for t in _flatten(state):
        total = total + ((t.abs() ** 2) if t.is_complex() else t**2).sum()
    return total


def _same_slots(got: Tensor, want: Tensor) -> Tensor:
    """A growing cache (the Transformer's, (B, heads, S, d), right-aligned) of a padded batch
    has S = T slots where a shorter sequence alone has fewer: the extra leading slots must be
    empty (zero) and the rest compares as it is."""
    if got.dim() == 4 and got.shape[2] > want.shape[2] and got.shape[3] == want.shape[3]:
        extra = got.shape[2] - want.shape[2]
        assert not bool(got[:, :, :extra].any()), "slots before a sequence's start are not empty"
        return got[:, :, extra:]
    return got


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in sorted(UNITS.items()):
        unit = cls(D, H, **cls.example_kwargs)
        for mode in unit.modes:
            cases.append((name, mode))
    return cases


def _grads(unit: nn.Module) -> list[Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in unit.parameters()]


@pytest.mark.parametrize(("name", "mode"), _cases())
def test_padded_batch_equals_each_sequence_alone(name: str, mode: str) -> None:
    torch.manual_seed(0)
    cls = UNITS[name]
    unit = cls(D, H, **cls.example_kwargs).double()
    unit.mode = mode
    lengths = torch.tensor(LENGTHS)
    T = max(LENGTHS)
    x = torch.randn(len(LENGTHS), T, D, dtype=torch.float64)

    xp = x.clone().requires_grad_()
    y, state = unit(xp, lengths=lengths)
    last_only = y.shape[1] == 1 and T > 1
    loss = sum(
        _loss(y[i : i + 1, : (1 if last_only else n)], [t[i] for t in _flatten(state)])
        for i, n in enumerate(LENGTHS)
    )
    unit.zero_grad(set_to_none=True)
    loss.backward()
    grads_batch, x_grad = _grads(unit), xp.grad

    grads_alone = [torch.zeros_like(p) for p in unit.parameters()]
    for i, n in enumerate(LENGTHS):
        xi = x[i : i + 1, :n].clone().requires_grad_()
        yi, si = unit(xi)
        unit.zero_grad(set_to_none=True)
        _loss(yi, [t[0] for t in _flatten(si)]).backward()
        grads_alone = [g + a for g, a in zip(grads_alone, _grads(unit), strict=True)]
        yb = y[i : i + 1] if last_only else y[i : i + 1, :n]
        torch.testing.assert_close(yb, yi, atol=TOL, rtol=TOL)
        for got, want in zip(_flatten(state), _flatten(si), strict=True):
            torch.testing.assert_close(_same_slots(got[i : i + 1], want), want, atol=TOL, rtol=TOL)
        torch.testing.assert_close(x_grad[i : i + 1, :n], xi.grad, atol=TOL, rtol=TOL)
        # The padding gets no gradient.
        assert not bool(x_grad[i, n:].any())
    for got, want in zip(grads_batch, grads_alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_lengths_of_all_t_change_nothing() -> None:
    unit = BMRU(D, H).double()
    x = torch.randn(3, 6, D, dtype=torch.float64)
    y, s = unit(x)
    y2, s2 = unit(x, lengths=torch.full((3,), 6))
    assert torch.equal(y, y2) and torch.equal(s.h, s2.h)


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        (torch.tensor([3, 0]), r"lie in \[1, 4\]"),
        (torch.tensor([3, 5]), r"lie in \[1, 4\]"),
        (torch.tensor([3.0, 2.0]), r"\(2,\) integer tensor"),
        (torch.tensor([3, 2, 1]), r"\(2,\) integer tensor"),
        ([3, 2], r"integer tensor, got list"),
    ],
)
def test_bad_lengths(lengths: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BMRU(D, H)(torch.randn(2, 4, D), lengths=lengths)


def test_packed_sequence_is_refused_with_how_to_pass_lengths() -> None:
    x = torch.randn(2, 4, D)
    packed = pack_padded_sequence(x, torch.tensor([4, 2]), batch_first=True)
    with pytest.raises(TypeError, match=r"pad_packed_sequence.*lengths=lengths"):
        BMRU(D, H)(packed)


def test_linear_scan_lengths_freeze_the_state_and_gradients() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([6, 2, 4])
    a = torch.rand(3, 6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64)
    h, h_last = linear_scan(a, b, h0, lengths=lengths)
    h_last.sum().backward()
    for i, n in enumerate(lengths.tolist()):
        hi, hi_last = linear_scan(a[i : i + 1, :n], b[i : i + 1, :n], h0[i : i + 1])
        torch.testing.assert_close(h[i, :n], hi[0])
        torch.testing.assert_close(h_last[i], hi_last[0])
        assert not bool(a.grad[i, n:].any()) and not bool(b.grad[i, n:].any())
    # A decay shared over batch and time broadcasts as before.
    shared = torch.full((1, 1, 4), 0.5, dtype=torch.float64)
    _, last = linear_scan(shared, b.detach(), lengths=lengths)
    _, alone = linear_scan(shared, b.detach()[1:2, :2])
    torch.testing.assert_close(last[1], alone[0])
    with pytest.raises(ValueError, match=r"lengths.*lie in \[1, 6\]"):
        linear_scan(a, b, lengths=torch.tensor([7, 1, 1]))
    with pytest.raises(ValueError, match=r"\(3,\) integer tensor"):
        linear_scan(a, b, lengths=torch.tensor([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", ["bmru-small", "lru-small", "gru-small", "src-digits"])
def test_network_final_states_are_those_of_each_sequence(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size=D, output_size=2).double().eval()
    lengths = torch.tensor([6, 3])
    x = torch.randn(2, 6, D, dtype=torch.float64)
    out, state = model(x, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        out_i, state_i = model(x[i : i + 1, :n])
        torch.testing.assert_close(out[i : i + 1], out_i)
        for got, want in zip(_flatten(state), _flatten(state_i), strict=True):
            torch.testing.assert_close(got[i : i + 1], want)
