"""Tasks defined for the experiments, built from the library's registered tasks.

flip-flop-echo: a flip-flop (persistent memory: a bit written at sparse random steps must be
held for arbitrarily long) with a second, independent demand on transient memory: echo a
Gaussian input channel `delay` steps later. A unit with only fading memory (LRU) can echo but
loses the latched bit once writes are further apart than its slowest decay; a bistable unit
(BMRU) latches perfectly but holds only sign-like states, so it cannot reproduce a real value
from `delay` steps ago. Only a network with both kinds of memory can do both, for any length.

    channels of x: 0 write flag, 1 written value ±1 (the flip-flop's), 2 u_t ~ N(0, 1)
    target per step: [latched value ±1, u_{t-delay}] (u before the start counts as 0), MSE
    metrics: mse (primary, both outputs), latch_accuracy (sign of output 0), echo_mse,
             echo_nrmse (output 1 only; 1.0 is the score of predicting 0)

Importing this module registers the task, so that `memrnn.train.train` can build it by name.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Generator, Tensor

from memrnn.tasks.base import Batch, check_int
from memrnn.tasks.registry import list_tasks, register_task
from memrnn.tasks.synthetic import FlipFlop


class FlipFlopEcho(FlipFlop):
    """Flip-flop plus a delayed echo of a noise channel (see the module docstring).

    Args: as FlipFlop (train_len=100, test_len=1000, p_write=0.05, seed=0, eval_samples=1024),
        and delay: steps between an input value and its echo (default 10).
    Shapes: x (B, T, 3) float; y (B, T, 2) float.
    """

    target: ClassVar[str] = "sequence"
    loss_kind: ClassVar[str] = "mse"
    primary_metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def __init__(
        self,
        train_len: int = 100,
        test_len: int = 1000,
        p_write: float = 0.05,
        seed: int = 0,
        eval_samples: int = 1024,
        delay: int = 10,
    ) -> None:
        super().__init__(train_len, test_len, p_write, seed, eval_samples)
        self.delay = check_int("delay", delay)
        self.input_size, self.output_size = 3, 2

    def _generate(
        self,
        batch_size: int,
        split: str,
        generator: Generator,
        seq_len: int | None,
    ) -> Batch:
        latch = super()._generate(batch_size, split, generator, seq_len)
        B, T = latch.y.shape
        u = torch.randn(B, T, generator=generator)
        echo = torch.zeros(B, T)
        if T > self.delay:
            echo[:, self.delay :] = u[:, : T - self.delay]
        x = torch.cat([latch.x, u.unsqueeze(-1)], dim=-1)
        y = torch.stack([2.0 * latch.y.float() - 1.0, echo], dim=-1)
        return Batch(x, y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            out, y = output.float(), batch.y.float()
            mse = torch.mean((out - y) ** 2)
            echo_mse = torch.mean((out[..., 1] - y[..., 1]) ** 2)
            echo_var = torch.mean(y[..., 1] ** 2)
            latch_acc = (torch.sign(out[..., 0]) == torch.sign(y[..., 0])).float().mean()
        return {
            "loss": float(mse),
            "mse": float(mse),
            "latch_accuracy": float(latch_acc),
            "echo_mse": float(echo_mse),
            "echo_nrmse": float((echo_mse / echo_var).sqrt()) if float(echo_var) > 0 else 1.0,
        }

    def chance(self) -> float:
        # Predicting 0 on both outputs: 1 on the latch, var(u) = 1 on the echo (after the delay).
        return 1.0


# The module can be imported twice (by the runner and by a test); register once.
if "flip-flop-echo" not in list_tasks():
    register_task("flip-flop-echo")(FlipFlopEcho)

__all__ = ["FlipFlopEcho"]
