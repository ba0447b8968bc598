"""`linear_scan`: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t, any backend.

Backward pass (SPEC.md section 1): with g_t the total gradient reaching h_t,
    g_t = dL/dh_t|direct + conj(a_{t+1}) g_{t+1},   dL/db_t = g_t,
    dL/da_t = g_t conj(h_{t-1}),   dL/dh0 = conj(a_1) g_1,
i.e. a reverse scan with the gates shifted by one step. Only a, h and h0 are saved, so no
per-step autograd graph is ever built. Conjugates follow PyTorch's convention for complex
tensors and are no-ops for real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from memrnn.scan import native
from memrnn.scan.reference import reference_scan
from memrnn.scan.tree import tree_scan

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "tree", "native", "triton")
REAL_DTYPES = (torch.float32, torch.float64)
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
SUPPORTED_DTYPES = REAL_DTYPES + LOW_PRECISION_DTYPES + COMPLEX_DTYPES

ForwardFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]
# Which backend `auto` picked, per (device type, dtype), after probing it once.
_AUTO_CHOICE: dict[tuple[str, torch.dtype], str] = {}


def _triton_forward() -> ForwardFn:
    from memrnn.scan.triton_gpu import triton_scan

    return triton_scan


def _generic_backward(
    forward: ForwardFn, a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward pass of any forward kernel: one scan in the opposite direction."""
    a_conj = a.conj()
    if a.shape[1] > 1:
        # Position t needs a_{next(t)}; the slot of the first-processed step multiplies a zero
        # initial state, so it is filled with zeros (never inf * 0).
        pad = torch.zeros_like(a_conj[:, :1])
        if reverse:
            a_next = torch.cat([pad, a_conj[:, :-1]], dim=1)
        else:
            a_next = torch.cat([a_conj[:, 1:], pad], dim=1)
    else:
        a_next = a_conj
    g = forward(a_next.contiguous(), gh, torch.zeros_like(h0), not reverse)
    if reverse:
        h_prev = torch.cat([h[:, 1:], h0.unsqueeze(1)], dim=1)
    else:
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
    da = g * h_prev.conj()
    if a.shape[1] == 1:
        da = da.sum(dim=1, keepdim=True)
    first = -1 if reverse else 0
    dh0 = a_conj[:, first] * g[:, first]
    return g, da, dh0


class _LinearScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, reverse: bool, backend: str) -> Tensor:
        h = _forward_fn(backend)(a, b, h0, reverse)
        ctx.reverse = reverse
        ctx.backend = backend
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, gh: Tensor):
        a, h, h0 = ctx.saved_tensors
        gh = gh.contiguous()
        if ctx.backend == "native":
            g, da, dh0 = native.native_scan_backward(a, h, h0, gh, ctx.reverse)
        else:
            g, da, dh0 = _generic_backward(_forward_fn(ctx.backend), a, h, h0, gh, ctx.reverse)
        if a.shape[0] == 1 and da.shape[0] > 1:
            da = da.sum(dim=0, keepdim=True)
        dh0 = dh0.expand_as(h0)
        return da, g, dh0, None, None


def _forward_fn(backend: str) -> ForwardFn:
    if backend == "native":
        return native.native_scan
    if backend == "tree":
        return tree_scan
    if backend == "triton":
        return _triton_forward()
    raise AssertionError(backend)


def _run(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, backend: str) -> Tensor:
    if backend == "reference":
        return reference_scan(a, b, h0, reverse)
    return _LinearScanFunction.apply(a, b, h0, reverse, backend)


def _probe(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Runs a backend once on a small problem, forward and backward, against the reference.

    Gradients are switched on for the probe itself, so that a first call made under
    `torch.no_grad()` or inference mode judges the backend, not the context.
    """
    try:
        with torch.inference_mode(False), torch.enable_grad():
            return _probe_unguarded(backend, device, dtype)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
        log.debug("scan backend %r unusable on %s/%s: %r", backend, device, dtype, err)
        return False


def _probe_unguarded(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    gen = torch.Generator().manual_seed(0)
    shape = (2, 5, 3)
    if dtype.is_complex:
        a = torch.randn(shape, generator=gen, dtype=dtype)
        b = torch.randn(shape, generator=gen, dtype=dtype)
    else:
        a = torch.rand(shape, generator=gen, dtype=dtype)
        b = torch.randn(shape, generator=gen, dtype=dtype)
    a, b = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    h0 = torch.zeros(2, 3, dtype=dtype, device=device)
    h = _run(a, b, h0, False, backend)
    grad_a, grad_b = torch.autograd.grad(h.abs().sum(), (a, b))
    h_ref = reference_scan(a, b, h0)
    ref_a, ref_b = torch.autograd.grad(h_ref.abs().sum(), (a, b))
    tol = 1e-3 if dtype in (torch.float32, torch.complex64) else 1e-8
    return all(
        torch.allclose(x, y, atol=tol, rtol=tol)
        for x, y in ((h, h_ref), (grad_a, ref_a), (grad_b, ref_b))
    )


def _candidates(device: torch.device, dtype: torch.dtype) -> list[str]:
    if device.type == "cpu" and native.AVAILABLE and dtype in native.SUPPORTED_DTYPES:
        return ["native"]
    if device.type == "cuda" and dtype in REAL_DTYPES:
        return ["triton"]
    return []


def resolve_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend that `backend="auto"` uses for this device and dtype (probed once, cached)."""
    key = (device.type, dtype)
    if key not in _AUTO_CHOICE:
        choice = "tree"
        for candidate in _candidates(device, dtype):
            if _probe(candidate, device, dtype):
                choice = candidate
                break
        _AUTO_CHOICE[key] = choice
    return _AUTO_CHOICE[key]


def reset_backend_choice() -> None:
    """Forgets the cached `auto` choices (after installing a compiler, or in tests)."""
    _AUTO_CHOICE.clear()


def _shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _validate(a: object, b: object, h0: object, backend: object) -> None:
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"linear_scan: `{name}` must be a torch.Tensor, got {type(value).__name__}"
            )
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    if b.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"linear_scan: `b` has dtype {b.dtype}; expected a floating or complex dtype "
            f"(float16, bfloat16, float32, float64, complex64, complex128)"
        )
    if a.dtype != b.dtype:
        raise TypeError(
            f"linear_scan: `a` has dtype {a.dtype} but `b` has {b.dtype}; they must match"
        )
    if b.dim() < 3:
        raise ValueError(
            f"linear_scan: `b` must have shape (B, T, N, ...) with time on dim 1; "
            f"got {_shape_str(b.shape)}"
        )
    if b.shape[1] == 0:
        raise ValueError("linear_scan: `b` has T = 0 time steps (dim 1); expected T >= 1")
    try:
        broadcast = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != b.shape:
        raise ValueError(
            f"linear_scan: `a` of shape {_shape_str(a.shape)} does not broadcast to `b`'s shape "
            f"{_shape_str(b.shape)}; expected (B or 1, T or 1, ...) matching b"
        )
    if a.device != b.device:
        raise ValueError(f"linear_scan: `a` is on {a.device} but `b` is on {b.device}")
    if h0 is not None:
        if not isinstance(h0, Tensor):
            raise TypeError(
                f"linear_scan: `h0` must be a torch.Tensor or None, got {type(h0).__name__}"
            )
        expected = (b.shape[0], *b.shape[2:])
        if tuple(h0.shape) != expected:
            raise ValueError(
                f"linear_scan: `h0` has shape {_shape_str(h0.shape)}; expected "
                f"{_shape_str(expected)} (b's shape without the time dim)"
            )
        if h0.dtype != b.dtype:
            raise TypeError(f"linear_scan: `h0` has dtype {h0.dtype} but `b` has {b.dtype}")
        if h0.device != b.device:
            raise ValueError(f"linear_scan: `h0` is on {h0.device} but `b` is on {b.device}")
    if backend not in BACKENDS:
        raise ValueError(f"linear_scan: unknown backend {backend!r}; expected one of {BACKENDS}")


def _mask_lengths(a: Tensor, b: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with the steps t >= lengths replaced by the identity (1, 0)."""
    B, T = b.shape[:2]
    if (
        not isinstance(lengths, Tensor)
        or lengths.shape != (B,)
        or lengths.is_floating_point()
        or lengths.is_complex()
        or lengths.dtype == torch.bool
    ):
        got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"linear_scan: `lengths` must be a ({B},) integer tensor, got {got}")
    lengths = lengths.to(b.device)
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"linear_scan: `lengths` must lie in [1, {T}] (T = b.shape[1])")
    valid = torch.arange(T, device=b.device) < lengths[:, None]  # (B, T)
    valid = valid.view(B, T, *([1] * (b.dim() - 2)))
    return torch.where(valid, a, torch.ones((), dtype=a.dtype, device=a.device)), torch.where(
        valid, b, torch.zeros((), dtype=b.dtype, device=b.device)
    )


def linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    *,
    reverse: bool = False,
    backend: str = "auto",
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Computes h_t = a_t * h_{t-1} + b_t along dim 1 and returns (h, h_last).

    Args:
        a: decays, broadcastable to b (size 1 in the batch or time dim for shared decays).
        b: inputs, (B, T, N, ...), real or complex. float16/bfloat16 accumulate in float32.
        h0: initial state (B, N, ...) or None for zeros.
        reverse: scan from t = T-1 down to 0 (h_t = a_t h_{t+1} + b_t).
        backend: "auto", "reference", "tree", "native" or "triton". `auto` uses the compiled
            kernel for the device when it runs correctly (probed once) and `tree` otherwise.
        lengths: (B,) integer valid length of each sequence, in [1, T], or None (all T). Past
            it the step is the identity (a_t, b_t) = (1, 0): the state stays at the last valid
            step (so does h_last) and no gradient reaches a_t, b_t there.

    Returns:
        h with b's shape and dtype, and the final state (h at the last step in scan order:
        t = T-1, or t = 0 when reverse).

    Example:
        >>> a, b = torch.full((2, 7, 4), 0.5), torch.ones(2, 7, 4)
        >>> h, h_last = linear_scan(a, b)
        >>> assert h.shape == (2, 7, 4) and torch.allclose(h_last, torch.full((2, 4), 2 - 0.5**6))
    """
    _validate(a, b, h0, backend)
    if lengths is not None:
        a, b = _mask_lengths(a, b, lengths)
    dtype = b.dtype
    if dtype in LOW_PRECISION_DTYPES:
        h, _ = linear_scan(
            a.float(),
            b.float(),
            None if h0 is None else h0.float(),
            reverse=reverse,
            backend=backend,
        )
        h = h.to(dtype)
        return h, h[:, 0] if reverse else h[:, -1]

    B, T = b.shape[:2]
    trailing = b.shape[2:]
    M = 1
    for size in trailing:
        M *= size
    # a as (Ba, Ta, M): materialise only the trailing dims it broadcasts over.
    a_full = a.reshape((1,) * (b.dim() - a.dim()) + tuple(a.shape))
    Ba, Ta = a_full.shape[:2]
    a3 = a_full.expand(Ba, Ta, *trailing).reshape(Ba, Ta, M)
    b3 = b.reshape(B, T, M)
    h0_2 = torch.zeros(B, M, dtype=dtype, device=b.device) if h0 is None else h0.reshape(B, M)

    if backend == "auto":
        backend = resolve_backend(b.device, dtype)
    h = _run(a3, b3, h0_2, reverse, backend).reshape(b.shape)
    return h, h[:, 0] if reverse else h[:, -1]
