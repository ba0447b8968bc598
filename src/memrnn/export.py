"""Export the one-step function of a unit or a network, for deployment as a plain RNN.

A recurrent model deploys as its step function: (x_t, state) -> (y_t, new state), with a
state of fixed size. `StepModule` turns the NamedTuple state into a flat list of tensors so
that the step is a pure tensor function

    StepModule(model).forward(x_t, *state_tensors) -> (y_t, *new_state_tensors)

which `torch.export.export` captures as a graph (`export_step`) and which ONNX exporters
accept (`export_onnx`). The step path never runs the parallel scan, so the compiled scan
kernels play no part in an exported graph.

Units are called through their unchecked `_step` (the Python-side argument checks of `step`
are done once here, on the example inputs); networks through `step`. Complex state tensors
(the LRU's) cross the boundary as real tensors with a trailing dim of 2 (`torch.view_as_real`)
because ONNX has no complex tensors (ours). Call `model.eval()` before exporting a model
with dropout; the export functions leave the train/eval mode alone.

A state that grows (the full-attention Transformer's key/value cache, empty at the start)
exports with its length as a second dynamic dim: the example state is advanced by
`GROW_STEPS` eager steps first, since torch.export specialises a length of 0 or 1; the
program then takes any cache length >= 0 (a Transformer with `window=W` has a state of fixed
size and exports like any unit).

Known limits: the ONNX exporters have no complex arithmetic, so units with a complex
recurrence (LRU, and hybrids containing one) export with `export_step` but not to ONNX.

Example:
    >>> unit = BMRU(4, 8)
    >>> program = export_step(unit, batch_size=2)
    >>> step = StepModule(unit)
    >>> y, h = program.module()(torch.randn(2, 4), *step.initial_tensors(2))
    >>> assert y.shape == (2, 8) and h.shape == (2, 8)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from memrnn.units.base import RecurrentUnit


def flatten_state(state: Any) -> tuple[list[Tensor], Any]:
    """A (possibly nested) NamedTuple state as a flat tensor list and the spec to rebuild it."""
    return tree_flatten(state)


def unflatten_state(tensors: Sequence[Tensor], spec: Any) -> Any:
    return tree_unflatten(list(tensors), spec)


def _to_boundary(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


class StepModule(nn.Module):
    """Wraps a unit or network as forward(x_t, *state_tensors) -> (y_t, *new_state_tensors).

    Args:
        model: a `RecurrentUnit` or a network with `init_state` and `step`.

    The state layout (order, nesting, which tensors are complex) is read from
    `model.init_state(1)`; `state_names` lists the flat tensors in order.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for method in ("init_state", "step"):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"StepModule: `model` has no `{method}` method; expected a "
                    f"RecurrentUnit or a network, got {type(model).__name__}"
                )
        self.model = model
        leaves, self._spec = flatten_state(model.init_state(1, device="meta"))
        self._complex = [t.is_complex() for t in leaves]
        self.state_names = _leaf_names(model.init_state(1, device="meta"))

    def initial_tensors(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[Tensor]:
        """The model's initial state as the flat tensor list `forward` takes."""
        leaves, _ = flatten_state(self.model.init_state(batch_size, device=device, dtype=dtype))
        return [_to_boundary(t) for t in leaves]

    def pack(self, state: Any) -> list[Tensor]:
        """A state NamedTuple as the flat tensor list."""
        leaves, _ = flatten_state(state)
        return [_to_boundary(t) for t in leaves]

    def unpack(self, tensors: Sequence[Tensor]) -> Any:
        """The flat tensor list back as the model's state NamedTuple."""
        if len(tensors) != len(self._complex):
            raise ValueError(
                f"StepModule: got {len(tensors)} state tensors; expected "
                f"{len(self._complex)} ({', '.join(self.state_names)})"
            )
        leaves = [
            torch.view_as_complex(t) if c else t
            for t, c in zip(tensors, self._complex, strict=True)
        ]
        return unflatten_state(leaves, self._spec)

    def forward(self, x_t: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        full = self.unpack(state)
        if isinstance(self.model, RecurrentUnit):
            y_t, new = self.model._step(x_t, full)
        else:
            y_t, new = self.model.step(x_t, full)
        return (y_t, *self.pack(new))


def _leaf_names(state: Any, prefix: str = "state") -> list[str]:
    if isinstance(state, Tensor):
        return [prefix]
    if isinstance(state, tuple):
        fields = getattr(state, "_fields", None) or [str(i) for i in range(len(state))]
        names: list[str] = []
        for field, value in zip(fields, state, strict=True):
            names.extend(_leaf_names(value, f"{prefix}.{field}"))
        return names
    return []


def example_inputs(
    model: nn.Module, batch_size: int = 1, dtype: torch.dtype | None = None
) -> tuple[Tensor, ...]:
    """(x_t, *state_tensors) with the model's sizes: random x_t, the initial state."""
    step = model if isinstance(model, StepModule) else StepModule(model)
    inner = step.model
    ref = next((p for p in inner.parameters() if p.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    config = getattr(inner, "config", None)
    if config is not None and getattr(config, "input_kind", "real") == "tokens":
        x_t = torch.zeros(batch_size, dtype=torch.long, device=device)
    else:
        size = getattr(inner, "input_size", None) or config.input_size
        x_t = torch.randn(batch_size, size, device=device, dtype=dtype)
    return (x_t, *step.initial_tensors(batch_size, device=device, dtype=dtype))


# Eager steps that give a growing example state a length torch.export does not specialise.
GROW_STEPS = 2


def growing_dims(model: nn.Module) -> list[list[int]]:
    """Per flat state tensor, the dims (beyond the batch) that are empty in the initial state
    and grow with every step (the full-attention Transformer's cache length)."""
    leaves, _ = flatten_state(model.init_state(1, device="meta"))
    return [[d for d in range(1, t.dim()) if t.shape[d] == 0] for t in leaves]


def _check_batch(batch_size: Any, caller: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{caller}: `batch_size` must be a positive int, got {batch_size!r}")


def _prepared(
    model: nn.Module, batch_size: int, dtype: torch.dtype | None, caller: str
) -> tuple[StepModule, tuple[Tensor, ...]]:
    """The wrapper and example inputs, after one eager step.

    The eager step runs the Python-side checks of a unit once, and makes units that build
    constants lazily (the LMU's discretised matrices, cached per dtype and device) build them
    outside tracing, so that no traced tensor ends up in such a cache.
    """
    _check_batch(batch_size, caller)
    if batch_size < 2:
        raise ValueError(
            f"{caller}: the example batch_size must be >= 2 (the batch dim is "
            "exported as dynamic and torch.export specialises a size of 1)"
        )
    # The wrapper follows the model's train/eval mode (a new module would be in training).
    step = StepModule(model).train(model.training)
    args = example_inputs(step, batch_size, dtype)
    if isinstance(model, RecurrentUnit):
        model.check_step_input(args[0])
        model.check_state(step.unpack(args[1:]), batch_size)
    with torch.no_grad():
        out = step(*args)
        if any(growing_dims(model)):
            for _ in range(GROW_STEPS):
                args = (args[0], *out[1:])
                out = step(*args)
            args = (args[0], *out[1:])
    return step, args


def _batch_dynamic_shapes(n_state: int, grows: list[list[int]] | None = None) -> tuple[Any, ...]:
    """Dim 0 of x_t and of every state tensor is the batch, nested as forward's signature;
    the dims in `grows` (per state tensor) are one shared dynamic cache length."""
    batch = torch.export.Dim("batch")
    cache = torch.export.Dim("cache")
    grows = grows or [[] for _ in range(n_state)]
    return (
        {0: batch},
        tuple({0: batch, **{d: cache for d in grows[i]}} for i in range(n_state)),
    )


def export_step(
    model: nn.Module,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.export.ExportedProgram:
    """Captures the step of a unit or network with `torch.export.export`.

    Args:
        model: a `RecurrentUnit` or a network (with init_state and step).
        batch_size: batch size of the example inputs (>= 2 when `dynamic_batch`, since
            torch.export specialises a size of 1).
        dynamic_batch: export the batch dim as dynamic (default True).
        dtype: dtype of the example inputs (default: the parameters').

    Returns:
        the ExportedProgram; `.module()(x_t, *state_tensors)` runs it.
    """
    if not dynamic_batch:
        _check_batch(batch_size, "export_step")
    step, args = _prepared(
        model, max(batch_size, 2) if not dynamic_batch else batch_size, dtype, "export_step"
    )
    if not dynamic_batch and batch_size == 1:
        args = tuple(a[:1] for a in args)
    grows = growing_dims(model)
    if dynamic_batch:
        dynamic_shapes = _batch_dynamic_shapes(len(args) - 1, grows)
    elif any(grows):
        cache = torch.export.Dim("cache")
        dynamic_shapes = ({}, tuple({d: cache for d in g} for g in grows))
    else:
        dynamic_shapes = None
    with torch.no_grad():
        return torch.export.export(step, args, dynamic_shapes=dynamic_shapes)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    batch_size: int = 2,
    dtype: torch.dtype | None = None,
    dynamo: bool = True,
) -> str:
    """Writes the step of a unit or network to an ONNX file; returns the path.

    Inputs are named `x_t` and the state names of `StepModule.state_names`; outputs `y_t`
    and the same names with a `new_` prefix. The batch dim is dynamic.

    Args:
        model: a `RecurrentUnit` or a network.
        path: the .onnx file to write.
        batch_size: batch size of the example inputs (>= 2).
        dtype: dtype of the example inputs (default: the parameters').
        dynamo: use the torch.export-based exporter (default) or the TorchScript one.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "export_onnx needs the `onnx` package: pip install memrnn[export]"
        ) from err
    step, args = _prepared(model, batch_size, dtype, "export_onnx")
    names = [n.replace(".", "_") for n in step.state_names]
    input_names = ["x_t", *names]
    output_names = ["y_t", *(f"new_{n}" for n in names)]
    path = os.fspath(path)
    try:
        _onnx_export(step, args, path, input_names, output_names, dynamo)
    except Exception as err:
        # The exporter colours its messages for a terminal; the error says it in plain text.
        raise RuntimeError(
            f"ONNX export failed ({type(err).__name__}: {plain_text(str(err))})"
        ) from err
    return path


# Terminal control sequences (colours, cursor moves): CSI ... final byte, and OSC ... BEL/ST.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-_]")


def plain_text(text: str) -> str:
    """`text` without terminal escape sequences, on one line."""
    return " ".join(_ANSI.sub("", text).split())


def _onnx_export(
    step: nn.Module,
    args: tuple[Tensor, ...],
    path: str,
    input_names: list[str],
    output_names: list[str],
    dynamo: bool,
) -> None:
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(
                step,
                args,
                path,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=_batch_dynamic_shapes(len(args) - 1, growing_dims(step.model)),
                report=False,
                verbose=False,
            )
        else:
            torch.onnx.export(
                step,
                args,
                path,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={n: {0: "batch"} for n in input_names + output_names},
            )


def run_onnx(path: str | os.PathLike[str], x_t: Tensor, *state: Tensor) -> list[Tensor]:
    """Runs an exported step file: onnxruntime when installed, else onnx's reference evaluator.

    Returns [y_t, *new_state_tensors] as torch tensors.
    """
    inputs = [x_t, *state]
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs = session.run(
            None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)}
        )
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator

        proto = onnx.load(os.fspath(path))
        names = [i.name for i in proto.graph.input]
        evaluator = ReferenceEvaluator(proto)
        outputs = evaluator.run(
            None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)}
        )
    return [torch.as_tensor(o) for o in outputs]


__all__ = [
    "StepModule",
    "example_inputs",
    "export_onnx",
    "export_step",
    "flatten_state",
    "plain_text",
    "run_onnx",
    "unflatten_state",
]
