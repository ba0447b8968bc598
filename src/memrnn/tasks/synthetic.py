"""Synthetic memory tasks, generated on the fly from a seeded torch.Generator.

    copy-first-input  recall the first of T Gaussian scalars at step T (BRC paper)
    denoising         recall 5 marked values, in order, after an end marker
    adding            sum of the two marked values among T uniform values
    selective-copy    reproduce tokens scattered among blanks, in order (Mamba)
    flip-flop         output the last written bit at every step (persistent-memory probe)

Every task takes `seed` (the default generator of `batch` and the base of the fixed
per-split evaluation streams) and `eval_samples` (the size of an `iter_split` pass).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Generator

from memrnn.tasks.base import Batch, GeneratedTask, check_float, check_int, check_split
from memrnn.tasks.registry import register_task


def _random_positions(
    batch_size: int,
    n_positions: int,
    k: int,
    generator: Generator,
) -> torch.Tensor:
    """k distinct positions in [0, n_positions) per row, sorted ascending: (B, k) int64."""
    scores = torch.rand(batch_size, n_positions, generator=generator)
    return scores.topk(k, dim=1).indices.sort(dim=1).values


class _Synthetic(GeneratedTask):
    def _init_common(self, seed: int, eval_samples: int) -> None:
        self.seed = check_int("seed", seed, minimum=0)
        self.eval_samples = check_int("eval_samples", eval_samples)


@register_task("copy-first-input")
class CopyFirstInput(_Synthetic):
    """Copy-first-input (Vecoven et al., "A bio-inspired bistable recurrent cell allows for
    long-lasting memory", https://arxiv.org/abs/2006.05252).

    x_t ~ N(0, 1), t = 1..T; the target, read at step T, is x_1. Predicting 0 gives MSE 1.

    Args:
        seq_len: T (default 100).
        seed: default generator seed (default 0). eval_samples: iter_split size (default 1024).
    Shapes: x (B, T, 1) float; y (B, 1) float.
    """

    target: ClassVar[str] = "last"
    loss_kind: ClassVar[str] = "mse"
    primary_metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, seq_len: int = 100, seed: int = 0, eval_samples: int = 1024) -> None:
        self.seq_len = check_int("seq_len", seq_len)
        self._init_common(seed, eval_samples)
        self.input_size, self.output_size = 1, 1

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = seq_len or self.seq_len
        x = torch.randn(batch_size, t, 1, generator=generator)
        return Batch(x, x[:, 0].clone())

    def chance(self) -> float:
        return 1.0


@register_task("denoising")
class Denoising(_Synthetic):
    """Denoising (Jing et al., "Gated orthogonal recurrent units",
    https://arxiv.org/abs/1706.02761; used in the BRC paper).

    Layout for length T, n_values = K and end marker at step e = T - K - 1 (0-based):
        channel 0 (value):  N(0, 1) noise at every step except e and the K answer steps (0)
        channel 1 (marker): 1 at the K marked steps, -1 at the end marker e, 0 elsewhere
    The K marked steps are distinct, drawn uniformly from [0, min(T - forbidden_tail, e)),
    so none lies in the last `forbidden_tail` steps. Over the last K steps (e+1 .. T-1) the
    target is the K marked values in order of position; the mask selects those K steps.
    Predicting 0 gives MSE 1.

    Args:
        seq_len: T (default 400). n_values: K (default 5).
        forbidden_tail: N, steps at the end that hold no marked value (default 200).
        seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T, 2) float; y (B, T, 1) float; mask (B, T) bool.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "mse"
    primary_metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def __init__(
        self,
        seq_len: int = 400,
        n_values: int = 5,
        forbidden_tail: int = 200,
        seed: int = 0,
        eval_samples: int = 1024,
    ) -> None:
        self.n_values = check_int("n_values", n_values)
        self.forbidden_tail = check_int("forbidden_tail", forbidden_tail, minimum=0)
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        self._init_common(seed, eval_samples)
        self.input_size, self.output_size = 2, 1

    def _window(self, t: int) -> int:
        return min(t - self.forbidden_tail, t - self.n_values - 1)

    def _check_len(self, t: int) -> int:
        if self._window(t) < self.n_values:
            need = self.n_values + max(self.forbidden_tail, self.n_values + 1)
            raise ValueError(
                f"seq_len must be >= {need} for n_values={self.n_values} and "
                f"forbidden_tail={self.forbidden_tail}, got {t}"
            )
        return t

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        k = self.n_values
        end = t - k - 1
        pos = _random_positions(batch_size, self._window(t), k, generator)  # (B, K)
        x = torch.zeros(batch_size, t, 2)
        x[:, :end, 0] = torch.randn(batch_size, end, generator=generator)
        rows = torch.arange(batch_size)[:, None]
        x[rows, pos, 1] = 1.0
        x[:, end, 1] = -1.0
        y = torch.zeros(batch_size, t, 1)
        y[:, end + 1 :, 0] = x[rows, pos, 0]
        mask = torch.zeros(batch_size, t, dtype=torch.bool)
        mask[:, end + 1 :] = True
        return Batch(x, y, mask)

    def chance(self) -> float:
        return 1.0


@register_task("adding")
class Adding(_Synthetic):
    """Adding problem (Hochreiter & Schmidhuber 1997; setting of Le et al., "A simple way to
    initialize recurrent networks of rectified linear units", https://arxiv.org/abs/1504.00941).

    channel 0: U[0, 1] values; channel 1: marker, 1 at exactly two steps, one drawn uniformly
    in the first half [0, T // 2) and one in the second half [T // 2, T) (the classic
    setting). The target, read at step T, is the sum of the two marked values. Predicting the
    mean 1 gives MSE Var(U1 + U2) = 1/6 ≈ 0.167.

    Args:
        seq_len: T >= 2 (default 200). seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T, 2) float; y (B, 1) float.
    """

    target: ClassVar[str] = "last"
    loss_kind: ClassVar[str] = "mse"
    primary_metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, seq_len: int = 200, seed: int = 0, eval_samples: int = 1024) -> None:
        self.seq_len = check_int("seq_len", seq_len, minimum=2)
        self._init_common(seed, eval_samples)
        self.input_size, self.output_size = 2, 1

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = check_int("seq_len", seq_len or self.seq_len, minimum=2)
        half = t // 2
        x = torch.zeros(batch_size, t, 2)
        x[:, :, 0] = torch.rand(batch_size, t, generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, t, (batch_size,), generator=generator)
        rows = torch.arange(batch_size)
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        y = (x[rows, first, 0] + x[rows, second, 0])[:, None]
        return Batch(x, y)

    def chance(self) -> float:
        return 1.0 / 6.0


@register_task("selective-copy")
class SelectiveCopy(_Synthetic):
    """Selective copying (Gu & Dao, "Mamba: linear-time sequence modeling with selective
    state spaces", https://arxiv.org/abs/2312.00752, section 4.1.1).

    Token ids: 0 .. vocab_size-1 are data symbols, `blank` = vocab_size, `delimiter` =
    vocab_size + 1. For total length T and K = n_tokens, with delimiter step d = T - K - 1:
        steps [0, d): K data tokens drawn uniformly from the symbols, at distinct random
                      positions (kept in order), blanks elsewhere
        step d:       the delimiter
        steps d+1 .. T-1: blanks; the targets there are the K data tokens in order
    Inputs are one-hot vectors of size vocab_size + 2 (input_kind "real"); targets are
    symbol ids, masked to the K answer steps. Chance accuracy is 1 / vocab_size.

    Args:
        seq_len: T (default 256; Mamba used 4096). n_tokens: K (default 16).
        vocab_size: data symbols (default 8). seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T, vocab_size + 2) float; y (B, T) int64; mask (B, T) bool.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        seq_len: int = 256,
        n_tokens: int = 16,
        vocab_size: int = 8,
        seed: int = 0,
        eval_samples: int = 1024,
    ) -> None:
        self.n_tokens = check_int("n_tokens", n_tokens)
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        self._init_common(seed, eval_samples)
        self.blank, self.delimiter = self.vocab_size, self.vocab_size + 1
        self.input_size, self.output_size = self.vocab_size + 2, self.vocab_size

    def _check_len(self, t: int) -> int:
        if t < 2 * self.n_tokens + 1:
            raise ValueError(
                f"seq_len must be >= 2 * n_tokens + 1 = {2 * self.n_tokens + 1}, got {t}"
            )
        return t

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        k = self.n_tokens
        d = t - k - 1
        tokens = torch.randint(0, self.vocab_size, (batch_size, k), generator=generator)
        pos = _random_positions(batch_size, d, k, generator)
        ids = torch.full((batch_size, t), self.blank, dtype=torch.long)
        rows = torch.arange(batch_size)[:, None]
        ids[rows, pos] = tokens
        ids[:, d] = self.delimiter
        x = torch.nn.functional.one_hot(ids, self.input_size).float()
        y = torch.zeros(batch_size, t, dtype=torch.long)
        y[:, d + 1 :] = tokens
        mask = torch.zeros(batch_size, t, dtype=torch.bool)
        mask[:, d + 1 :] = True
        return Batch(x, y, mask)

    def chance(self) -> float:
        return 1.0 / self.vocab_size


@register_task("flip-flop")
class FlipFlop(_Synthetic):
    """Flip-flop (latch): remember the last written bit for arbitrarily long.

    channel 0 (write): 1 at a write step, else 0. Each step is a write with probability
    p_write, and step 0 always is, so the target is always defined.
    channel 1 (value): the written bit as ±1 at write steps, 0 elsewhere.
    Target at every step t: the class (0 for -1, 1 for +1) of the value written at the last
    write step <= t; cross-entropy over 2 classes, metric accuracy (chance 0.5).
    split "train" and "val" use train_len, "test" uses test_len, for train-short /
    test-long horizon generalisation; an explicit seq_len overrides both.

    Args:
        train_len: T for train/val (default 100). test_len: T for test (default 1000).
        p_write: write probability per step (default 0.05).
        seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T, 2) float; y (B, T) int64.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        train_len: int = 100,
        test_len: int = 1000,
        p_write: float = 0.05,
        seed: int = 0,
        eval_samples: int = 1024,
    ) -> None:
        self.train_len = check_int("train_len", train_len)
        self.test_len = check_int("test_len", test_len)
        self.p_write = check_float("p_write", p_write, 0.0, 1.0, low_open=True)
        self._init_common(seed, eval_samples)
        self.seq_len = self.train_len
        self.input_size, self.output_size = 2, 2

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        t = seq_len or (self.test_len if check_split(split) == "test" else self.train_len)
        write = torch.rand(batch_size, t, generator=generator) < self.p_write
        write[:, 0] = True
        bits = torch.randint(0, 2, (batch_size, t), generator=generator)
        x = torch.zeros(batch_size, t, 2)
        x[:, :, 0] = write.float()
        x[:, :, 1] = torch.where(write, 2.0 * bits.float() - 1.0, 0.0)
        steps = torch.arange(t).expand(batch_size, t)
        last = torch.where(write, steps, 0).cummax(dim=1).values
        return Batch(x, bits.gather(1, last))

    def chance(self) -> float:
        return 0.5
