"""memrnn.tasks: seeded sources of batches with declared shapes, losses and metrics."""

from memrnn.tasks.arrays import ArraysTask
from memrnn.tasks.base import Batch, Task
from memrnn.tasks.recall import MQAR, Induction
from memrnn.tasks.registry import create_task, list_tasks, register_task
from memrnn.tasks.sequences import (
    MNIST1D,
    CharText,
    Digits,
    MackeyGlass,
    PermutedMNIST,
    SequentialMNIST,
)
from memrnn.tasks.synthetic import Adding, CopyFirstInput, Denoising, FlipFlop, SelectiveCopy

__all__ = [
    "MNIST1D",
    "MQAR",
    "Adding",
    "ArraysTask",
    "Batch",
    "CharText",
    "CopyFirstInput",
    "Denoising",
    "Digits",
    "FlipFlop",
    "Induction",
    "MackeyGlass",
    "PermutedMNIST",
    "SelectiveCopy",
    "SequentialMNIST",
    "Task",
    "create_task",
    "list_tasks",
    "register_task",
]
