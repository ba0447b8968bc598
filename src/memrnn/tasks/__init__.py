"""memrnn.tasks: seeded sources of batches with declared shapes, losses and metrics."""

from memrnn.tasks.base import Batch, Task
from memrnn.tasks.registry import create_task, list_tasks, register_task
from memrnn.tasks.synthetic import Adding, CopyFirstInput, Denoising, FlipFlop, SelectiveCopy

__all__ = [
    "Adding",
    "Batch",
    "CopyFirstInput",
    "Denoising",
    "FlipFlop",
    "SelectiveCopy",
    "Task",
    "create_task",
    "list_tasks",
    "register_task",
]
