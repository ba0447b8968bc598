"""Recall tasks (mqar, induction): layout checked against plain loops, per-query scoring,
determinism, the query-slot law, impossible settings, and a training step through a model."""

from __future__ import annotations

import pytest
import torch

from memrnn.models import create_model_for_task
from memrnn.tasks import create_task, list_tasks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_both_are_registered_token_tasks() -> None:
    assert {"mqar", "induction"} <= set(list_tasks())
    for name in ("mqar", "induction"):
        task = create_task(name)
        assert task.input_kind == "tokens" and task.target == "sequence"
        assert task.input_size == task.output_size == task.vocab_size


@pytest.mark.parametrize(("T", "K", "V"), [(32, 4, 16), (64, 16, 64), (33, 8, 18), (256, 64, 256)])
def test_mqar_queries_ask_for_the_values_of_the_keys(T: int, K: int, V: int) -> None:
    task = create_task("mqar", seq_len=T, num_kv_pairs=K, vocab_size=V)
    batch = task.batch(16, generator=gen())
    assert batch.x.shape == batch.y.shape == batch.mask.shape == (16, T)
    for x, y, mask in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist(), strict=True):
        pairs = dict(zip(x[0 : 2 * K : 2], x[1 : 2 * K : 2], strict=True))
        assert len(pairs) == K and len(set(pairs.values())) == K
        assert all(1 <= k < V // 2 <= v < V for k, v in pairs.items())
        queried = []
        for t in range(2 * K, T):
            if mask[t]:
                assert (t - 2 * K) % 2 == 0 and y[t] == pairs[x[t]]
                queried.append(x[t])
            else:
                assert x[t] == 0
        assert sorted(queried) == sorted(pairs)


def test_mqar_queries_come_mostly_soon_after_the_pairs() -> None:
    # P(slot g) ∝ (g + 1)^(a - 1): with a = 0.01 the first quarter of 100 slots holds about
    # 80% of the mass; with a = 1 (uniform) about a quarter.
    for a, low, high in ((0.01, 0.6, 0.95), (1.0, 0.15, 0.35)):
        task = create_task("mqar", seq_len=216, num_kv_pairs=8, vocab_size=64, power_a=a)
        batch = task.batch(400, generator=gen(1))
        slots = (batch.mask.nonzero()[:, 1] - 16) // 2
        share = float((slots < 25).float().mean())
        assert low < share < high, (a, share)


def test_induction_answer_is_the_token_after_the_first_trigger() -> None:
    task = create_task("induction", seq_len=20, vocab_size=5)
    batch = task.batch(64, generator=gen())
    for x, y, mask in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist(), strict=True):
        where = [t for t, tok in enumerate(x) if tok == 4]
        assert len(where) == 2 and where[1] == 19 and where[0] <= 17
        assert mask == [False] * 19 + [True] and y[19] == x[where[0] + 1]


@pytest.mark.parametrize("name", ["mqar", "induction"])
def test_scored_per_query_and_deterministic(name: str) -> None:
    extra = {"num_kv_pairs": 4} if name == "mqar" else {}
    task = create_task(name, seq_len=40, vocab_size=16, **extra)
    batch = task.batch(8, generator=gen(3))
    again = task.batch(8, generator=gen(3))
    assert torch.equal(batch.x, again.x) and torch.equal(batch.y, again.y)
    # Logits that are right at every query, wrong everywhere else, score 1.
    right = torch.nn.functional.one_hot(batch.y, task.output_size).float() * 10
    assert task.metrics(right, batch)["accuracy"] == 1.0
    # Right at half the queries: 0.5.
    queries = batch.mask.nonzero()
    half = right.clone()
    for b, t in queries[::2].tolist():
        half[b, t] = torch.roll(half[b, t], 1)
    expected = 1 - len(queries[::2]) / len(queries)
    assert task.metrics(half, batch)["accuracy"] == pytest.approx(expected)
    assert 0 < task.chance() < 0.2


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mqar", {"num_kv_pairs": 8, "vocab_size": 16}, r"num_kv_pairs \(8\) must be <= .* = 7"),
        ("mqar", {"seq_len": 60, "num_kv_pairs": 16}, r"seq_len must be >= 4 \* num_kv_pairs = 64"),
        ("mqar", {"power_a": 0}, r"power_a must be a number in \(0.0, 1.0\]"),
        ("mqar", {"vocab_size": 2}, "vocab_size must be an integer >= 3"),
        ("induction", {"seq_len": 2}, "seq_len must be >= 3"),
        ("induction", {"vocab_size": 2}, "vocab_size must be an integer >= 3"),
    ],
)
def test_impossible_settings_are_refused(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_task(name, **kwargs)


def test_a_longer_seq_len_override_is_checked() -> None:
    task = create_task("mqar", seq_len=64, num_kv_pairs=8, vocab_size=32)
    with pytest.raises(ValueError, match="seq_len must be >= 4 \\* num_kv_pairs = 32"):
        task.batch(2, seq_len=20)


@pytest.mark.parametrize("model", ["transformer-small", "mingru-small"])
def test_a_model_trains_a_step(model: str) -> None:
    task = create_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=16)
    torch.manual_seed(0)
    net = create_model_for_task(model, task, d_model=16)
    batch = task.batch(4, generator=gen())
    out, _ = net(batch.x)
    assert out.shape == (4, 32, 16)
    loss = task.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
