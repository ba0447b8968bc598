"""Task registry: names -> Task classes, driving the CLI, the tests and the benchmarks.

    task = create_task("adding", seq_len=200)
    list_tasks()  # sorted names

Tasks register with `@register_task("name")`. Tasks whose module is optional (it may be
missing, or need packages not installed) are listed in `_LAZY` by import path; they appear
in `list_tasks()` only once their module imports and defines the class.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from memrnn.tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}

# Modules whose import registers the built-in tasks.
_BUILTIN_MODULES = (
    "memrnn.tasks.synthetic",
    "memrnn.tasks.recall",
    "memrnn.tasks.sequences",
    "memrnn.tasks.arrays",
)

# name -> "module:Class", resolved on first use.
_LAZY: dict[str, str] = {
    "spiking-digits": "memrnn.tasks.images:SpikingDigits",
    "spiking-mnist": "memrnn.tasks.images:SpikingMNIST",
    "nmnist": "memrnn.tasks.images:NMNIST",
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a Task subclass under `name` (also set as `cls.name`)."""

    def wrap(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"task name {name!r} is already registered to {existing.__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _resolve_lazy(name: str) -> type[Task] | None:
    """Import a lazily listed task; None when its module or class is not available."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module_name, _, cls_name = _LAZY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        return None
    # The module may have registered it itself on import; otherwise register it here.
    if name not in _REGISTRY:
        register_task(name)(cls)
    return _REGISTRY[name]


def list_tasks() -> list[str]:
    """Sorted names of every available task."""
    _load_builtins()
    for name in _LAZY:
        _resolve_lazy(name)
    return sorted(_REGISTRY)


def get_task_class(name: str) -> type[Task]:
    """The Task class registered as `name`; ValueError with close matches when unknown."""
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None and name in _LAZY:
        cls = _resolve_lazy(name)
        if cls is None:
            module_name = _LAZY[name].partition(":")[0]
            raise ValueError(
                f"task {name!r} needs module {module_name}, which is not available here"
            )
    if cls is None:
        names = list_tasks()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} Available: {', '.join(names)}")
    return cls


def task_kwargs(name: str) -> list[str]:
    """Names of the hyperparameters (constructor keyword arguments) of task `name`."""
    sig = inspect.signature(get_task_class(name).__init__)
    return [
        p.name
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def create_task(name: str, **kwargs: Any) -> Task:
    """Build task `name` with hyperparameters `kwargs` (validated by name before the call)."""
    cls = get_task_class(name)
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if not takes_any:
        valid = task_kwargs(name)
        for key in kwargs:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"task {name!r} has no argument {key!r}{hint}; valid arguments: "
                    f"{', '.join(valid) or '(none)'}"
                )
    missing = [
        p.name
        for p in list(sig.parameters.values())[1:]
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if missing:
        raise ValueError(f"task {name!r} requires argument(s): {', '.join(missing)}")
    return cls(**kwargs)
