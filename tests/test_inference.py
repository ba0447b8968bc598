"""Streaming inference: prefill + steps equals one parallel forward, with a constant state."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._pytree import tree_leaves

from memrnn.inference import generate, prefill, sample_next, stream
from memrnn.models import create_model

VOCAB = 11


def _real_model(name: str, head: str = "sequence", input_size: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    # seq_len gives the LMU's window (theta), as a task would.
    model = create_model(
        name, input_size=input_size, output_size=2, seq_len=16, head=head, d_model=8
    )
    return model.double().eval()


def _token_model(name: str = "bmru-small") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(
        name, input_size=VOCAB, output_size=VOCAB, input_kind="tokens", head="next-token", d_model=8
    )
    return model.double().eval()


@pytest.mark.parametrize(
    "name",
    [
        "bmru-small",
        "cmru-small",
        "lru-small",
        "mingru-small",
        "plmu-small",
        "hybrid-small",
        "gru-small",
    ],
)
@pytest.mark.parametrize("split", [1, 6])
def test_prefill_then_stream_equals_full_forward(name: str, split: int) -> None:
    model = _real_model(name)
    x = torch.randn(2, 13, 3, dtype=torch.float64)
    full, full_state = model(x)  # (B, T, 2)
    out, state = prefill(model, x[:, :split])
    assert torch.allclose(out, full[:, :split], atol=1e-10)
    steps = list(stream(model, x[:, split:], state, return_state=True))
    got = torch.stack([o for o, _ in steps], dim=1)
    assert torch.allclose(got, full[:, split:], atol=1e-10)
    for a, b in zip(tree_leaves(steps[-1][1]), tree_leaves(full_state), strict=True):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("head", ["last", "mean"])
def test_stream_pooled_heads_equal_forward_on_every_prefix(head: str) -> None:
    model = _real_model("bmru-small", head=head)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    _, state = prefill(model, x[:, :4])
    for t, out_t in enumerate(stream(model, x[:, 4:], state), start=5):
        expected, _ = model(x[:, :t])
        assert torch.allclose(out_t, expected, atol=1e-10)


@pytest.mark.parametrize("name", ["bmru-small", "lru-small", "plmu-small", "hybrid-small"])
def test_state_size_is_constant(name: str) -> None:
    model = _real_model(name, head="mean")
    _, state = prefill(model, torch.randn(1, 3, 3, dtype=torch.float64))
    shapes = [tuple(t.shape) for t in tree_leaves(state)]
    for _, carried in itertools.islice(
        stream(
            model, itertools.repeat(torch.randn(3, dtype=torch.float64)), state, return_state=True
        ),
        200,
    ):
        assert [tuple(t.shape) for t in tree_leaves(carried)] == shapes
    # Prompts of different lengths give states of the same size.
    _, long_state = prefill(model, torch.randn(1, 300, 3, dtype=torch.float64))
    assert [tuple(t.shape) for t in tree_leaves(long_state)] == shapes


def test_stream_accepts_scalars_vectors_and_batches() -> None:
    model = _real_model("mingru-small", input_size=1)
    x = torch.randn(7, dtype=torch.float64)
    full, _ = model(x.view(1, 7, 1))
    from_floats = torch.stack(list(stream(model, x.tolist())))  # (T, 2)
    assert from_floats.shape == (7, 2)
    assert torch.allclose(from_floats, full[0], atol=1e-10)
    from_vectors = torch.stack(list(stream(model, x.view(7, 1))))
    assert torch.allclose(from_vectors, full[0], atol=1e-10)
    from_batch = torch.stack(list(stream(model, x.view(1, 7, 1))), dim=1)  # (1, T, 2)
    assert torch.allclose(from_batch, full, atol=1e-10)


def test_stream_errors() -> None:
    model = _real_model("mingru-small")
    with pytest.raises(ValueError, match="scalar but the model takes 3"):
        next(stream(model, [1.0]))
    with pytest.raises(ValueError, match="scalar, \\(D,\\) or \\(B, D\\)"):
        next(stream(model, [torch.zeros(1, 1, 1, 3)]))
    with pytest.raises(TypeError, match="real numbers"):
        next(stream(model, [torch.zeros(3, dtype=torch.complex64)]))
    with pytest.raises(TypeError, match="must be an nn.Module"):
        next(stream(object(), [1.0]))  # type: ignore[arg-type]


def test_generate_greedy_matches_argmax_of_full_forward() -> None:
    model = _token_model()
    prompt = torch.randint(VOCAB, (3, 5))
    ids = generate(model, prompt, 8, temperature=0)
    assert ids.shape == (3, 13) and ids.dtype == torch.long
    assert torch.equal(ids[:, :5], prompt)
    logits, _ = model(ids)  # (B, T, V)
    assert torch.equal(ids[:, 5:], logits[:, 4:-1].argmax(-1))
    assert torch.equal(generate(model, prompt, 8, top_k=1), ids)


def test_generate_is_reproducible_with_a_generator_and_respects_top_k() -> None:
    model = _token_model("lru-small")
    prompt = torch.randint(VOCAB, (7,))
    a = generate(model, prompt, 20, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 20, generator=torch.Generator().manual_seed(3))
    assert a.shape == (27,) and torch.equal(a, b)
    assert generate(model, prompt, 0).shape == (7,)
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).repeat(200, 1)
    draws = sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}


def test_generate_errors() -> None:
    model = _token_model()
    prompt = torch.randint(VOCAB, (1, 3))
    with pytest.raises(ValueError, match="n_new"):
        generate(model, prompt, -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 2, temperature=-0.5)
    with pytest.raises(TypeError, match="temperature"):
        generate(model, prompt, 2, temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 2, top_k=0)
    with pytest.raises(TypeError, match="integer token ids"):
        generate(model, prompt.float(), 2)
    with pytest.raises(ValueError, match="with T >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="next-token head"):
        last_head = create_model(
            "bmru-small",
            input_size=VOCAB,
            output_size=VOCAB,
            input_kind="tokens",
            head="last",
            d_model=8,
        )
        generate(last_head, prompt, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        prefill(model, [[1, 2]])  # type: ignore[arg-type]
