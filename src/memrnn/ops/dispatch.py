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
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
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


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name where it cannot run (missing module, device, dtype)."""


def check_backend(value: Any, owner: str) -> str:
    """`value` if it is a backend name, else a ValueError naming `owner` and the valid values."""
    if not isinstance(value, str) or value not in BACKENDS:
        raise ValueError(f"{owner}: unknown backend {value!r}; expected one of {BACKENDS}")
    return value


def backend_module(op: str, backend: str) -> ModuleType:
    """`memrnn.ops.<op>.<backend>`, imported on first use; BackendUnavailable if it cannot be."""
    key = (op, backend)
    if key not in _MODULES:
        try:
            _MODULES[key] = importlib.import_module(f"memrnn.ops.{op}.{backend}")
        except ImportError as err:
            _MODULES[key] = err
    module = _MODULES[key]
    if isinstance(module, Exception):
        raise BackendUnavailable(
            f"the {backend!r} backend of op {op!r} is not available: {module}"
        ) from module
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
    try:
        module = backend_module(op, backend)
    except BackendUnavailable as err:
        return str(err)
    if function is not None and not hasattr(module, function):
        return f"the {backend!r} backend of op {op!r} has no {function}"
    if not getattr(module, "AVAILABLE", True):
        return f"the {backend!r} backend of op {op!r} needs {backend}: pip install {backend}"
    wanted = _DEVICE.get(backend)
    if wanted is not None and device.type != wanted:
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
        candidate = {"cpu": "numba", "cuda": "triton"}.get(device.type)
        if candidate == "triton" and not triton_ok:
            candidate = None
        if (
            candidate is not None
            and is_available(op, candidate, device, dtype, function)
            and (probe is None or _probe(op, candidate, device, dtype, probe))
        ):
            return candidate
    # Elsewhere the batched torch ops; ops whose only general path is the loop run that.
    return "torch" if is_available(op, "torch", device, dtype) else "naive"


def implementation(op: str, backend: str, name: str) -> Callable[..., Any]:
    """The function `name` of the backend module of `op` (a resolved backend, not "auto")."""
    return getattr(backend_module(op, backend), name)


def reset_probes() -> None:
    """Forgets the probes' results (after installing a compiler, or in tests)."""
    _PROBED.clear()
    _MODULES.clear()


__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "backend_module",
    "check_backend",
    "implementation",
    "is_available",
    "reset_probes",
    "resolve",
    "unavailable_reason",
]
