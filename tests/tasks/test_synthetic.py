"""Synthetic tasks: shapes, determinism, semantics checked against plain loops, chance."""

from __future__ import annotations

import pytest
import torch

from memrnn.tasks import Task, create_task
from memrnn.tasks.base import SPLITS

SMALL = {
    "copy-first-input": {"seq_len": 20},
    "denoising": {"seq_len": 60, "forbidden_tail": 20},
    "adding": {"seq_len": 30},
    "selective-copy": {"seq_len": 40, "n_tokens": 4},
    "flip-flop": {"train_len": 30, "test_len": 90},
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def expected_shapes(task: Task, t: int, b: int) -> dict[str, tuple[int, ...]]:
    x = (b, t, task.input_size)
    if task.target == "last":
        y = (b, task.output_size)
    elif task.loss_kind == "mse":
        y = (b, t, task.output_size)
    else:
        y = (b, t)
    return {"x": x, "y": y}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("split", SPLITS)
def test_shapes_and_dtypes(name: str, split: str) -> None:
    task = create_task(name, **SMALL[name])
    default_t = task.test_len if (name == "flip-flop" and split == "test") else task.seq_len
    for t in (None, 47):
        batch = task.batch(3, split, gen(), seq_len=t)
        shapes = expected_shapes(task, t or default_t, 3)
        assert batch.x.shape == shapes["x"] and batch.x.dtype == torch.float32
        assert batch.y.shape == shapes["y"]
        assert batch.y.dtype == (torch.float32 if task.loss_kind == "mse" else torch.long)
        if batch.mask is not None:
            assert batch.mask.shape == batch.x.shape[:2] and batch.mask.dtype == torch.bool
        assert batch.lengths is None
        out = torch.zeros(*shapes["y"], *([task.output_size] if task.loss_kind != "mse" else []))
        assert torch.isfinite(task.loss(out, batch))
        assert task.primary_metric in task.metrics(out, batch)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_determinism(name: str) -> None:
    task = create_task(name, **SMALL[name])
    a, b = task.batch(5, "train", gen(3)), task.batch(5, "train", gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, task.batch(5, "train", gen(4)).x)
    p1 = list(task.iter_split("val", 4, max_samples=10))
    p2 = list(task.iter_split("val", 4, max_samples=10))
    assert [len(b.x) for b in p1] == [4, 4, 2]
    assert all(torch.equal(u.x, v.x) and torch.equal(u.y, v.y) for u, v in zip(p1, p2, strict=True))
    test = next(iter(task.iter_split("test", 4)))
    assert not torch.equal(p1[0].x[:, :5], test.x[:, :5])
    assert sum(len(b.x) for b in task.iter_split("test", 500)) == task.eval_samples


# A trivial predictor against chance(): predicting 0 (copy, denoising), the mean 1 (adding)
# or uniform logits (accuracy ties go to class 0: chance holds for uniform targets).
@pytest.mark.parametrize("name", sorted(SMALL))
def test_trivial_predictor_scores_chance(name: str) -> None:
    task = create_task(name, **SMALL[name])
    batch = task.batch(4096, "train", gen(1))
    if task.loss_kind == "mse":
        out = torch.full_like(batch.y, 1.0 if name == "adding" else 0.0)
    else:
        out = torch.zeros(*batch.y.shape, task.output_size)
    value = task.metrics(out, batch)[task.primary_metric]
    # Standard errors at 4096 samples are below 0.02 for every metric here.
    assert value == pytest.approx(task.chance(), abs=0.06 * max(1.0, task.chance()))


def test_copy_first_target() -> None:
    batch = create_task("copy-first-input").batch(8, "train", gen())
    assert batch.x.shape == (8, 100, 1)
    assert torch.equal(batch.y, batch.x[:, 0])


def test_denoising_layout() -> None:
    t, tail, k = 80, 30, 5
    task = create_task("denoising", seq_len=t, forbidden_tail=tail, n_values=k)
    batch = task.batch(64, "train", gen())
    value, marker = batch.x[..., 0], batch.x[..., 1]
    end = t - k - 1
    for i in range(64):
        marked = (marker[i] == 1).nonzero().flatten()
        assert len(marked) == k and int(marked.max()) < t - tail
        assert (marker[i] == -1).nonzero().flatten().tolist() == [end]
        assert torch.equal(batch.y[i, end + 1 :, 0], value[i, marked])
        assert batch.mask[i].nonzero().flatten().tolist() == list(range(end + 1, t))
    assert not marker[:, t - tail :].eq(1).any()
    # With no forbidden tail, marks may reach right up to the end marker.
    task0 = create_task("denoising", seq_len=20, forbidden_tail=0)
    marks = task0.batch(2000, "train", gen()).x[..., 1]
    assert marks[:, : 20 - 6].eq(1).any(0).all() and not marks[:, 20 - 6 :].eq(1).any()


def test_adding_target_and_halves() -> None:
    t = 41
    batch = create_task("adding", seq_len=t).batch(256, "train", gen())
    marker = batch.x[..., 1]
    assert torch.equal(marker.sum(1), torch.full((256,), 2.0))
    assert torch.equal(marker[:, : t // 2].sum(1), torch.ones(256))
    expected = (batch.x[..., 0] * marker).sum(1, keepdim=True)
    assert torch.allclose(batch.y, expected)
    assert ((batch.x[..., 0] >= 0) & (batch.x[..., 0] < 1)).all()


def test_selective_copy_answers() -> None:
    task = create_task("selective-copy", seq_len=50, n_tokens=6, vocab_size=5)
    batch = task.batch(32, "train", gen())
    ids = batch.x.argmax(-1)
    assert torch.equal(batch.x.sum(-1), torch.ones(32, 50))
    d = 50 - 6 - 1
    for i in range(32):
        placed = [int(v) for v in ids[i, :d] if v < task.vocab_size]
        assert placed == batch.y[i, d + 1 :].tolist()
        assert int(ids[i, d]) == task.delimiter
        assert ids[i, d + 1 :].eq(task.blank).all()
    assert batch.mask.sum(1).eq(6).all() and batch.mask[:, d + 1 :].all()


def test_flip_flop_matches_loop() -> None:
    task = create_task("flip-flop", train_len=40, test_len=400, p_write=0.1)
    batch = task.batch(16, "train", gen())
    assert batch.x.shape[1] == 40
    assert task.batch(2, "test", gen()).x.shape[1] == 400
    assert next(iter(task.iter_split("test", 2, max_samples=2))).x.shape[1] == 400
    write, value = batch.x[..., 0], batch.x[..., 1]
    assert write[:, 0].eq(1).all()
    for i in range(16):
        bit = None
        for t in range(40):
            if write[i, t] == 1:
                assert value[i, t] in (-1.0, 1.0)
                bit = int(value[i, t] > 0)
            else:
                assert value[i, t] == 0
            assert int(batch.y[i, t]) == bit


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("copy-first-input", {"seq_len": 0}, "seq_len must be an integer >= 1"),
        ("denoising", {"seq_len": 100, "forbidden_tail": 98}, "seq_len must be >= "),
        ("denoising", {"n_values": 0}, "n_values"),
        ("adding", {"seq_len": 1}, "seq_len must be an integer >= 2"),
        ("selective-copy", {"seq_len": 20, "n_tokens": 10}, "seq_len must be >= 2 \\* n_tokens"),
        ("selective-copy", {"vocab_size": 1}, "vocab_size"),
        ("flip-flop", {"p_write": 0.0}, "p_write must be a number in \\(0.0, 1.0\\]"),
        ("flip-flop", {"test_len": 2.5}, "test_len"),
        ("adding", {"seed": -1}, "seed"),
    ],
)
def test_bad_hyperparameters(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_task(name, **kwargs)


def test_bad_batch_arguments() -> None:
    task = create_task("denoising")
    with pytest.raises(ValueError, match="split must be one of"):
        task.batch(2, "dev")
    with pytest.raises(ValueError, match="seq_len must be >= "):
        task.batch(2, "train", seq_len=100)
    with pytest.raises(ValueError, match="batch_size"):
        task.batch(0)
    with pytest.raises(ValueError, match="max_samples"):
        next(task.iter_split("val", 4, max_samples=0))


def test_loss_reads_last_valid_step_and_respects_masks() -> None:
    task = create_task("adding", seq_len=10)
    batch = task.batch(4, "train", gen())
    per_step = torch.randn(4, 10, 1)
    assert torch.allclose(task.loss(per_step, batch), task.loss(per_step[:, -1], batch))
    lengths = torch.tensor([10, 3, 7, 1])
    padded = batch._replace(lengths=lengths)
    expected = ((per_step[torch.arange(4), lengths - 1] - batch.y) ** 2).mean()
    assert torch.allclose(task.loss(per_step, padded), expected)
    # Steps outside the mask do not count: changing them leaves loss and metrics unchanged.
    sc = create_task("selective-copy", seq_len=20, n_tokens=3)
    b = sc.batch(4, "train", gen())
    logits = torch.randn(4, 20, sc.output_size)
    other = torch.where(b.mask[..., None], logits, torch.randn_like(logits))
    assert torch.equal(sc.loss(logits, b), sc.loss(other, b))
    assert sc.metrics(logits, b) == sc.metrics(other, b)
    perfect = torch.nn.functional.one_hot(b.y, sc.output_size).float() * 50
    assert sc.metrics(perfect, b)["accuracy"] == 1.0


def test_default_generator_is_seeded_and_advances() -> None:
    a, b = create_task("adding", seed=5), create_task("adding", seed=5)
    first = a.batch(3)
    assert torch.equal(first.x, b.batch(3).x)
    assert not torch.equal(first.x, a.batch(3).x)
