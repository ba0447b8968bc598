"""Recall tasks that compare recurrent models with attention: MQAR and induction.

    mqar       multi-query associative recall: key-value pairs, then queries of the keys
    induction  a trigger token seen once, followed by a token; at the end the trigger again,
               and the model must give the token that followed it

Both read token ids (input_kind "tokens") and are scored per query: the loss and the accuracy
count only the steps where an answer is due (the mask), so a model's accuracy is the fraction
of queries it answers. Both take `seed` and `eval_samples` like the synthetic tasks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Generator

from memrnn.tasks.base import Batch, GeneratedTask, check_float, check_int
from memrnn.tasks.registry import register_task


class _Recall(GeneratedTask):
    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "cross_entropy"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    input_kind = "tokens"

    def _init_common(self, seed: int, eval_samples: int) -> None:
        self.seed = check_int("seed", seed, minimum=0)
        self.eval_samples = check_int("eval_samples", eval_samples)


def _distinct(batch_size: int, low: int, high: int, k: int, generator: Generator) -> torch.Tensor:
    """k distinct ids from [low, high) per row, in random order: (B, k) int64."""
    scores = torch.rand(batch_size, high - low, generator=generator)
    return scores.topk(k, dim=1).indices + low


@register_task("mqar")
class MQAR(_Recall):
    """Multi-query associative recall (Arora et al., "Zoology: measuring and improving recall
    in efficient language models", https://arxiv.org/abs/2312.04927).

    Token 0 is the filler; keys come from [1, V // 2), values from [V // 2, V). For K =
    num_kv_pairs and length T:
        steps 0 .. 2K − 1: the K pairs k_1 v_1 ... k_K v_K (distinct keys, distinct values)
        steps 2K .. T − 1: filler, except that each key is queried once, at step 2K + 2g_i;
            the target at that step is its value (the token that followed the key).
    The slots g_i are K distinct draws from [0, (T − 2K) // 2) with P(g) ∝ (g + 1)^(a − 1),
    a = power_a (Zoology's power law: most queries come soon after the pairs, a few late).
    Only the K query steps are scored; chance accuracy is 1 / (V − V // 2).

    Args:
        seq_len: T (default 256). num_kv_pairs: K (default 16).
        vocab_size: V, filler, keys and values together (default 256).
        power_a: exponent a of the query-slot law, in (0, 1] (default 0.01; 1 is uniform).
        seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T) int64; y (B, T) int64; mask (B, T) bool (K steps per row).
    """

    def __init__(
        self,
        seq_len: int = 256,
        num_kv_pairs: int = 16,
        vocab_size: int = 256,
        power_a: float = 0.01,
        seed: int = 0,
        eval_samples: int = 1024,
    ) -> None:
        self.num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs)
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=3)
        self.power_a = check_float("power_a", power_a, 0.0, 1.0, low_open=True)
        keys = self.vocab_size // 2 - 1
        if self.num_kv_pairs > keys:
            raise ValueError(
                f"num_kv_pairs ({num_kv_pairs}) must be <= vocab_size // 2 - 1 = {keys}, the "
                f"number of distinct keys a vocabulary of {vocab_size} holds"
            )
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        self._init_common(seed, eval_samples)
        self.input_size = self.output_size = self.vocab_size

    def _check_len(self, t: int) -> int:
        need = 4 * self.num_kv_pairs
        if t < need:
            raise ValueError(
                f"seq_len must be >= 4 * num_kv_pairs = {need} (the pairs, then a slot of 2 "
                f"steps per query), got {t}"
            )
        return t

    def _generate(
        self, batch_size: int, split: str, generator: Generator, seq_len: int | None
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        k, v = self.num_kv_pairs, self.vocab_size
        keys = _distinct(batch_size, 1, v // 2, k, generator)  # (B, K)
        values = _distinct(batch_size, v // 2, v, k, generator)  # (B, K)
        slots = (t - 2 * k) // 2
        # K distinct slots drawn with P(g) ∝ (g + 1)^(a - 1): Gumbel top-k samples without
        # replacement in proportion to the weights.
        log_w = (self.power_a - 1) * torch.log(torch.arange(1, slots + 1, dtype=torch.float64))
        uniform = torch.rand(batch_size, slots, generator=generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
        gaps = (log_w + gumbel).topk(k, dim=1).indices  # (B, K), key i queried at slot gaps[i]
        x = torch.zeros(batch_size, t, dtype=torch.long)
        x[:, 0 : 2 * k : 2], x[:, 1 : 2 * k : 2] = keys, values
        where = 2 * k + 2 * gaps  # (B, K) query steps
        x.scatter_(1, where, keys)
        y = torch.zeros(batch_size, t, dtype=torch.long).scatter_(1, where, values)
        mask = torch.zeros(batch_size, t, dtype=torch.bool).scatter_(1, where, True)
        return Batch(x, y, mask)

    def chance(self) -> float:
        return 1.0 / (self.vocab_size - self.vocab_size // 2)


@register_task("induction")
class Induction(_Recall):
    """Induction (the copying behaviour of "induction heads": Olsson et al., "In-context
    learning and induction heads", https://arxiv.org/abs/2209.11895).

    Tokens 0 .. V − 2 are drawn uniformly; token V − 1 is the trigger. The trigger appears
    once at a random step p in [0, T − 3], followed by a token x, and again at the last step
    T − 1, nowhere else; the target at the last step is x. Only that step is scored; chance
    accuracy is 1 / (V − 1).

    Args:
        seq_len: T (default 256). vocab_size: V, trigger included (default 16).
        seed (default 0), eval_samples (default 1024).
    Shapes: x (B, T) int64; y (B, T) int64; mask (B, T) bool (the last step).
    """

    def __init__(
        self, seq_len: int = 256, vocab_size: int = 16, seed: int = 0, eval_samples: int = 1024
    ) -> None:
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=3)
        self.seq_len = self._check_len(check_int("seq_len", seq_len))
        self._init_common(seed, eval_samples)
        self.trigger = self.vocab_size - 1
        self.input_size = self.output_size = self.vocab_size

    def _check_len(self, t: int) -> int:
        if t < 3:
            raise ValueError(
                f"seq_len must be >= 3 (the trigger, its follower, the trigger again), got {t}"
            )
        return t

    def _generate(
        self, batch_size: int, split: str, generator: Generator, seq_len: int | None
    ) -> Batch:
        t = self._check_len(seq_len or self.seq_len)
        x = torch.randint(0, self.trigger, (batch_size, t), generator=generator)
        p = torch.randint(0, t - 2, (batch_size, 1), generator=generator)
        x.scatter_(1, p, self.trigger)
        x[:, -1] = self.trigger
        answer = x.gather(1, p + 1)  # (B, 1) the token after the first trigger
        y = torch.zeros(batch_size, t, dtype=torch.long)
        y[:, -1:] = answer
        mask = torch.zeros(batch_size, t, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(x, y, mask)

    def chance(self) -> float:
        return 1.0 / (self.vocab_size - 1)


__all__ = ["MQAR", "Induction"]
