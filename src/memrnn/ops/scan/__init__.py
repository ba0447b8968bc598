"""The linear scan h_t = a_t * h_{t-1} + b_t (diagonal, real or complex), any backend.

`linear_scan` checks and folds its arguments to (B, T, M) and runs one backend's `scan(a, b,
h0, reverse=False) -> h` (`naive.py`: the loop; `torch.py`: an odd/even tree of torch ops;
`numba.py`: compiled CPU kernels; a `triton.py` beside them is picked up on CUDA). Backward
passes: `memrnn.ops.scan.autograd`, the math in docs/scan.md.
"""

from __future__ import annotations

# Not `import torch`: that name is the `torch` backend module of this package once loaded.
import torch as th
from torch import Tensor

from memrnn.ops import dispatch

REAL_DTYPES = (th.float32, th.float64)
LOW_PRECISION_DTYPES = (th.float16, th.bfloat16)
COMPLEX_DTYPES = (th.complex64, th.complex128)
SUPPORTED_DTYPES = REAL_DTYPES + LOW_PRECISION_DTYPES + COMPLEX_DTYPES


def _probe(backend: str, device: th.device, dtype: th.dtype) -> bool:
    """Runs a backend once on a small problem, forward and backward, against the naive loop."""
    gen = th.Generator().manual_seed(0)
    shape = (2, 5, 3)
    if dtype.is_complex:
        a = th.randn(shape, generator=gen, dtype=dtype)
        b = th.randn(shape, generator=gen, dtype=dtype)
    else:
        a = th.rand(shape, generator=gen, dtype=dtype)
        b = th.randn(shape, generator=gen, dtype=dtype)
    a, b = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    h0 = th.zeros(2, 3, dtype=dtype, device=device)
    h = dispatch.implementation("scan", backend, "scan")(a, b, h0, False)
    grad_a, grad_b = th.autograd.grad(h.abs().sum(), (a, b))
    h_ref = dispatch.implementation("scan", "naive", "scan")(a, b, h0, False)
    ref_a, ref_b = th.autograd.grad(h_ref.abs().sum(), (a, b))
    tol = 1e-3 if dtype in (th.float32, th.complex64) else 1e-8
    return all(
        th.allclose(x, y, atol=tol, rtol=tol)
        for x, y in ((h, h_ref), (grad_a, ref_a), (grad_b, ref_b))
    )


def resolve_backend(device: th.device, dtype: th.dtype) -> str:
    """The backend `backend="auto"` runs for this device and dtype (probed once, cached).

    On CUDA that is the chunked Triton kernel (`triton.py`) for every B·N: its programs cover
    (batch row, chunk of time, block of channels), so small B·N still fills the GPU."""
    return dispatch.resolve("scan", "auto", device, dtype, probe=_probe)


def _shape_str(shape: tuple[int, ...] | th.Size) -> str:
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
        broadcast = th.broadcast_shapes(a.shape, b.shape)
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
    dispatch.check_backend(backend, "linear_scan")


def _mask_lengths(a: Tensor, b: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with the steps t >= lengths replaced by the identity (1, 0)."""
    B, T = b.shape[:2]
    if (
        not isinstance(lengths, Tensor)
        or lengths.shape != (B,)
        or lengths.is_floating_point()
        or lengths.is_complex()
        or lengths.dtype == th.bool
    ):
        got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"linear_scan: `lengths` must be a ({B},) integer tensor, got {got}")
    lengths = lengths.to(b.device)
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"linear_scan: `lengths` must lie in [1, {T}] (T = b.shape[1])")
    valid = th.arange(T, device=b.device) < lengths[:, None]  # (B, T)
    valid = valid.view(B, T, *([1] * (b.dim() - 2)))
    return th.where(valid, a, th.ones((), dtype=a.dtype, device=a.device)), th.where(
        valid, b, th.zeros((), dtype=b.dtype, device=b.device)
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
        backend: "auto", "naive", "torch", "numba" or "triton" (`memrnn.ops.dispatch`). `auto`
            uses the compiled kernel for the device when it runs correctly (probed once) and
            the torch tree otherwise.
        lengths: (B,) integer valid length of each sequence, in [1, T], or None (all T). Past
            it the step is the identity (a_t, b_t) = (1, 0): the state stays at the last valid
            step (so does h_last) and no gradient reaches a_t, b_t there.

    Returns:
        h with b's shape and dtype, and the final state (h at the last step in scan order:
        t = T-1, or t = 0 when reverse).

    Example:
        >>> a, b = th.full((2, 7, 4), 0.5), th.ones(2, 7, 4)
        >>> h, h_last = linear_scan(a, b)
        >>> assert h.shape == (2, 7, 4) and th.allclose(h_last, th.full((2, 4), 2 - 0.5**6))
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
    h0_2 = th.zeros(B, M, dtype=dtype, device=b.device) if h0 is None else h0.reshape(B, M)

    if backend == "auto":
        backend = resolve_backend(b.device, dtype)
    else:
        backend = dispatch.resolve("scan", backend, b.device, dtype)
    h = dispatch.implementation("scan", backend, "scan")(a3, b3, h0_2, reverse).reshape(b.shape)
    return h, h[:, 0] if reverse else h[:, -1]


__all__ = ["SUPPORTED_DTYPES", "linear_scan", "resolve_backend"]
