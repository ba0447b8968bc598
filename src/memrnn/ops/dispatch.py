"""Which implementation of an op runs: the backend vocabulary, availability and `auto`.

Every op (`memrnn.ops.<op>`) has one module per backend beside its `__init__.py`:

    naive   the plain loop over time, the ground truth (always there, any device)
    torch   batched torch ops (any device), where the op has such a path
    numba   compiled CPU kernels (float32/float64, needs numba)
    triton  compiled GPU kernels (CUDA, needs triton)

A backend module is looked up lazily as `memrnn.ops.<op>.<backend>`, so adding `triton.py` to
an op's folder is all it takes to give that op a GPU kernel: it exports the op's function under
the same name and signature as its siblings, and optionally `SUPPORTED_DTYPES`. Units and
users pass `backend="auto"` (or a name) and never import a backend module themselves.

Testing hook: `dispatch_as("cuda")` makes the dispatcher treat CPU tensors as CUDA ones, so that
`auto` picks what it would pick on a GPU (the triton kernels) while the tensors stay on the CPU;
with `TRITON_INTERPRET=1` set before triton is first imported, the kernels then run in Triton's
interpreter. It changes only the dispatcher's choice, never where tensors live.

Under `torch.compile`, `auto` is resolved while dynamo traces, from what is already known: it
passes over the numba kernels (dynamo cannot trace into them and would break the graph) and
takes the batched torch ops or the loop; the triton kernels are `torch.library` custom ops with
fake implementations, which trace, and are taken when an eager call has already imported and
probed them (run the model once before compiling it; otherwise auto takes the torch ops). The
naive and torch backends of every op are imported with `memrnn.ops` (`preload`), so no import
happens inside a trace.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "naive", "torch", "numba", "triton")
# The device type each compiled backend runs on.
_DEVICE = {"numba": "cpu", "triton": "cuda"}
# (op, backend) -> module, or the error that importing it raised.
_MODULES: dict[tuple[str, str], ModuleType | Exception] = {}
# Results of `auto`'s probes, per (op, backend, device type, dtype).
_PROBED: dict[tuple[str, str, str, torch.dtype], bool] = {}
# Device type the dispatcher sees for tensors of a device type (set by `dispatch_as`).
_SEEN_AS: dict[str, str] = {}


@contextlib.contextmanager
def dispatch_as(device_type: str, tensors_on: str = "cpu") -> Iterator[None]:
    """Within the block, tensors on `tensors_on` are dispatched as if on `device_type`.

    A testing hook: `with dispatch_as("cuda"):` makes `auto` choose the CUDA backends for CPU
    tensors (run under Triton's interpreter), so that the GPU wiring of whole units can be
    compared with their CPU paths on a machine without a GPU. Not thread-safe; not for use
    inside `torch.compile`.
    """
    for name, value in (("device_type", device_type), ("tensors_on", tensors_on)):
        if value not in ("cpu", "cuda"):
            raise ValueError(f"dispatch_as: `{name}` must be 'cpu' or 'cuda', got {value!r}")
    previous = _SEEN_AS.get(tensors_on)
    _SEEN_AS[tensors_on] = device_type
    try:
        yield
    finally:
        if previous is None:
            _SEEN_AS.pop(tensors_on, None)
        else:
            _SEEN_AS[tensors_on] = previous


def _seen_type(device: torch.device) -> str:
    return _SEEN_AS.get(device.type, device.type)


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name where it cannot run (missing module, device, dtype)."""


def check_backend(value: Any, owner: str) -> str:
    """`value` if it is a backend name, else a ValueError naming `owner` and the valid values."""
    if not isinstance(value, str) or value not in BACKENDS:
        raise ValueError(f"{owner}: unknown backend {value!r}; expected one of {BACKENDS}")
    return value


def _load(op: str, backend: str) -> ModuleType | str:
    """`memrnn.ops.<op>.<backend>` (imported on first use), or why it cannot be had. Raises
    nothing: `auto` runs this inside torch.compile traces too."""
    key = (op, backend)
    if key not in _MODULES:
        if torch.compiler.is_compiling():
            # Dynamo cannot trace an import; a backend not loaded eagerly is out of reach here.
            return (
                f"the {backend!r} backend of op {op!r} was not loaded before torch.compile "
                f"traced it; run the model once eagerly, or call "
                f"memrnn.ops.dispatch.preload({op!r}, {backend!r}), before compiling"
            )
        try:
            _MODULES[key] = importlib.import_module(f"memrnn.ops.{op}.{backend}")
        except ImportError as err:
            _MODULES[key] = err
    module = _MODULES[key]
    if isinstance(module, Exception):
        return f"the {backend!r} backend of op {op!r} is not available: {module}"
    return module


def backend_module(op: str, backend: str) -> ModuleType:
    """`memrnn.ops.<op>.<backend>`, imported on first use; BackendUnavailable if it cannot be."""
    module = _load(op, backend)
    if isinstance(module, str):
        raise BackendUnavailable(module)
    return module


def unavailable_reason(
    op: str,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    function: str | None = None,
) -> str | None:
    """Why `backend` cannot run `op` (its `function`, when named) on tensors of this device and
    dtype, or None if it can."""
    module = _load(op, backend)
    if isinstance(module, str):
        return module
    if function is not None and not hasattr(module, function):
        return f"the {backend!r} backend of op {op!r} has no {function}"
    if not getattr(module, "AVAILABLE", True):
        return f"the {backend!r} backend of op {op!r} needs {backend}: pip install {backend}"
    wanted = _DEVICE.get(backend)
    if wanted is not None and _seen_type(device) != wanted:
        return f"the {backend!r} backend of op {op!r} runs on {wanted} tensors, got {device}"
    dtypes = getattr(module, "SUPPORTED_DTYPES", None)
    if dtypes is not None and dtype not in dtypes:
        return f"the {backend!r} backend of op {op!r} does not support dtype {dtype}"
    return None


def is_available(
    op: str, backend: str, device: torch.device, dtype: torch.dtype, function: str | None = None
) -> bool:
    return unavailable_reason(op, backend, device, dtype, function) is None


def _probe(
    op: str, backend: str, device: torch.device, dtype: torch.dtype, probe: Callable[..., bool]
) -> bool:
    key = (op, backend, device.type, dtype)
    if key not in _PROBED:
        if torch.compiler.is_compiling():
            # A probe runs kernels for real: not inside a trace. Unprobed means not chosen.
            return False
        try:
            # Gradients on for the probe itself: a first call under no_grad or inference mode
            # must judge the backend, not the context (the result is kept for the process).
            with torch.inference_mode(False), torch.enable_grad():
                _PROBED[key] = bool(probe(backend, device, dtype))
        except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
            log.debug("%s backend %r unusable on %s/%s: %r", op, backend, device, dtype, err)
            _PROBED[key] = False
    return _PROBED[key]


def resolve(
    op: str,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    probe: Callable[[str, torch.device, torch.dtype], bool] | None = None,
    compiled: bool = True,
    triton_ok: bool = True,
    function: str | None = None,
) -> str:
    """The backend that runs `op` for tensors of this device and dtype.

    A named backend is returned as it is when it can run, else BackendUnavailable says why.
    `auto` goes through the rules below, each a one-line reason. `probe(backend, device,
    dtype)`, when given, must also pass (once per process, device type and dtype) before a
    compiled backend is chosen automatically; `compiled=False` keeps `auto` off the compiled
    backends (what the op's arguments need, e.g. a callable surrogate, they do not have) and
    `triton_ok=False` keeps it off triton only (the problem is too small for it). `function`,
    when named, must be in the backend's module (a backend may have only some of an op's
    functions).
    """
    check_backend(backend, f"ops.{op}")
    if backend != "auto":
        reason = unavailable_reason(op, backend, device, dtype, function)
        if reason is not None:
            raise BackendUnavailable(reason)
        return backend
    if compiled:
        # CPU: the numba kernels stream each tensor once; the torch ops take a dozen passes.
        # CUDA: the triton kernels, where the op has them and the caller deems them faster.
        candidate = {"cpu": "numba", "cuda": "triton"}.get(_seen_type(device))
        if candidate == "triton" and not triton_ok:
            candidate = None
        # Dynamo cannot trace into the numba kernels: under torch.compile they would break
        # the graph, so compiled code runs the torch ops (or the loop) on the CPU.
        if candidate == "numba" and torch.compiler.is_compiling():
            candidate = None
        if (
            candidate is not None
            and is_available(op, candidate, device, dtype, function)
            and (probe is None or _probe(op, candidate, device, dtype, probe))
        ):
            return candidate
    # Elsewhere the batched torch ops; ops whose only general path is the loop run that.
    return "torch" if is_available(op, "torch", device, dtype) else "naive"


def preload(op: str, *backends: str) -> None:
    """Imports backends of `op` now (each that can be imported), so that a later
    `torch.compile` trace finds them loaded; `memrnn.ops` preloads naive and torch."""
    for backend in backends:
        check_backend(backend, f"dispatch.preload({op!r})")
        with contextlib.suppress(BackendUnavailable):
            backend_module(op, backend)


def implementation(op: str, backend: str, name: str) -> Callable[..., Any]:
    """The function `name` of the backend module of `op` (a resolved backend, not "auto")."""
    return getattr(backend_module(op, backend), name)


def reset_probes() -> None:
    """Forgets the probes' results (after installing a compiler, or in tests)."""
    _PROBED.clear()
    # The naive and torch modules stay: they need no compiler and are preloaded for compile.
    for key in [key for key in _MODULES if key[1] not in ("naive", "torch")]:
        del _MODULES[key]


__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "backend_module",
    "check_backend",
    "dispatch_as",
    "implementation",
    "is_available",
    "preload",
    "reset_probes",
    "resolve",
    "unavailable_reason",
]
