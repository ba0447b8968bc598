"""Task registry: names, close-match errors, kwarg validation, lazy optional modules."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import memrnn.tasks as tasks
from memrnn.tasks import Task, create_task, list_tasks, register_task
from memrnn.tasks import registry as reg
from memrnn.tasks.base import INPUT_KINDS, TARGETS

BUILTIN = [
    "adding",
    "arrays",
    "copy-first-input",
    "denoising",
    "digits",
    "flip-flop",
    "mackey-glass",
    "mnist1d",
    "psmnist",
    "selective-copy",
    "smnist",
    "text",
]


def test_list_tasks_has_every_builtin() -> None:
    names = list_tasks()
    assert set(BUILTIN) <= set(names) and names == sorted(names)
    for name in names:
        cls = reg.get_task_class(name)
        assert issubclass(cls, Task) and cls.name == name
        assert cls.target in TARGETS and cls.loss_kind in ("cross_entropy", "mse")
        assert isinstance(cls.higher_is_better, bool) and cls.primary_metric


def test_optional_image_tasks_listed_only_when_available() -> None:
    images_present = importlib.util.find_spec("memrnn.tasks.images") is not None
    for name, path in reg._LAZY.items():
        module, _, cls_name = path.partition(":")
        available = images_present and hasattr(importlib.import_module(module), cls_name)
        assert (name in list_tasks()) == available


def test_lazy_entry_with_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(reg._LAZY, "phantom", "memrnn.tasks.no_such_module:Phantom")
    assert "phantom" not in list_tasks()
    with pytest.raises(ValueError, match="needs module memrnn.tasks.no_such_module"):
        create_task("phantom")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown task 'psmnst'; did you mean 'psmnist'"):
        create_task("psmnst")
    with pytest.raises(ValueError, match="unknown task 'zzz' Available: adding, "):
        create_task("zzz")


def test_bad_kwarg_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match="task 'adding' has no argument 'length'; valid arguments: seq_len, seed, "
        "eval_samples",
    ):
        create_task("adding", length=10)
    with pytest.raises(ValueError, match="no argument 'p_wrte' \\(did you mean 'p_write'\\?\\)"):
        create_task("flip-flop", p_wrte=0.1)
    assert reg.task_kwargs("flip-flop") == [
        "train_len",
        "test_len",
        "p_write",
        "seed",
        "eval_samples",
    ]


def test_register_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))

    @register_task("constant")
    class Constant(Task):
        def __init__(self, value: float = 1.0) -> None:
            self.value = value

    assert "constant" in list_tasks() and Constant.name == "constant"
    assert create_task("constant", value=2.0).value == 2.0
    with pytest.raises(ValueError, match="already registered to Adding"):
        register_task("adding")(Constant)
    with pytest.raises(TypeError, match="expects a Task subclass"):
        register_task("nothing")(int)


# Every generated task builds from defaults (data-file tasks need a path) and runs its loss.
@pytest.mark.parametrize(
    "name",
    [
        "adding",
        "copy-first-input",
        "denoising",
        "flip-flop",
        "mackey-glass",
        "selective-copy",
        "digits",
    ],
)
def test_defaults_build_and_declare_sizes(name: str) -> None:
    task = create_task(name)
    assert task.input_kind in INPUT_KINDS and task.input_size >= 1 and task.output_size >= 1
    b = task.batch(2, "train", torch.Generator().manual_seed(0))
    classes = task.loss_kind == "cross_entropy"
    out = torch.zeros(*b.y.shape, task.output_size) if classes else torch.zeros_like(b.y)
    out.requires_grad_(True)
    task.loss(out, b).backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert isinstance(task.chance(), float)


def test_public_api() -> None:
    for name in tasks.__all__:
        assert hasattr(tasks, name)
    assert {"Batch", "Task", "create_task", "list_tasks", "register_task"} <= set(tasks.__all__)
