"""The linear scan h_t = a_t h_{t−1} + b_t as a chunked Triton kernel (GPU; CPU through the
Triton interpreter), registered as the custom op `memrnn_triton::scan` with a fake (meta)
implementation and its backward, so that `torch.compile` traces through it without breaks.

The kernels are in `memrnn.ops._triton`: chunks of `CHUNK` steps are scanned in parallel over
(batch row, chunk, channel block), the chunk totals combined with `tl.associative_scan`, and
the carries applied. The backward pass runs the same kernels in the opposite direction and
writes ∂L/∂a = g_t conj(h_{t−1}) and ∂L/∂b = g_t in its last pass; ∂L/∂h0 = conj(a_1) g_1.
Complex tensors are scanned as real and imaginary planes; float16/bfloat16 are read as they are
and accumulated in float32 (h is stored in the input dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor

from memrnn.ops._triton import BLOCK, CHUNK, MODE_SCAN, acc_dtype, run_chunked

SUPPORTED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)


def _planes(t: Tensor) -> Tensor:
    """The tensor as real numbers: complex (…) becomes (…, 2) [re, im]."""
    return torch.view_as_real(t) if t.is_complex() else t


def _launch(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    h: Tensor,
    *,
    reverse: bool,
    bwd: bool,
    gh: Tensor | None = None,
    da: Tensor | None = None,
    db: Tensor | None = None,
    dh0: Tensor | None = None,
    chunk: int,
    block: int,
) -> None:
    B, T, N = b.shape
    hc = 2 if b.is_complex() else 1
    strides = (
        a.shape[1] * N * hc if a.shape[0] > 1 else 0,  # a's batch stride (0: shared)
        N * hc if a.shape[1] > 1 else 0,  # a's time stride (0: shared)
        T * N * hc,
        N * hc,
        1,  # offset of an imaginary part
        N * hc,
        1,
    )
    run_chunked(
        mode=MODE_SCAN,
        bwd=bwd,
        flip=reverse != bwd,
        complex_=b.is_complex(),
        hc=hc,
        B=B,
        T=T,
        N=N,
        a=_planes(a),
        b=_planes(b),
        h0=_planes(h0),
        h=_planes(h),
        strides=strides,
        acc=acc_dtype(b.dtype),
        gh=None if gh is None else _planes(gh),
        out1=None if da is None else _planes(da),
        out2=None if db is None else _planes(db),
        dh0=None if dh0 is None else _planes(dh0),
        chunk=chunk,
        block=block,
    )


@torch.library.custom_op("memrnn_triton::scan", mutates_args=())
def _scan_op(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, chunk: int, block: int) -> Tensor:
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    h = torch.empty_like(b)
    _launch(a, b, h0, h, reverse=reverse, bwd=False, chunk=chunk, block=block)
    return h


@_scan_op.register_fake
def _(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, chunk: int, block: int) -> Tensor:
    return torch.empty_like(b)


@torch.library.custom_op("memrnn_triton::scan_backward", mutates_args=())
def _scan_backward_op(
    a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool, chunk: int, block: int
) -> tuple[Tensor, Tensor, Tensor]:
    a, h, h0, gh = a.contiguous(), h.contiguous(), h0.contiguous(), gh.contiguous()
    B, T, N = h.shape
    # ∂L/∂a over the full (B, T, N) in the accumulation dtype, summed below where a is shared.
    wide = acc_dtype(h.dtype)
    if h.is_complex():
        wide = torch.complex128 if wide == torch.float64 else torch.complex64
    da = torch.empty(B, T, N, dtype=wide, device=h.device)
    db, dh0 = torch.empty_like(h), torch.empty_like(h0)
    _launch(
        a,
        h,
        h0,
        h,
        reverse=reverse,
        bwd=True,
        gh=gh,
        da=da,
        db=db,
        dh0=dh0,
        chunk=chunk,
        block=block,
    )
    da = da.sum_to_size(a.shape).to(a.dtype)
    return da, db, dh0


@_scan_backward_op.register_fake
def _(
    a: Tensor, h: Tensor, h0: Tensor, gh: Tensor, reverse: bool, chunk: int, block: int
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(h), torch.empty_like(h0)


def _setup_context(ctx, inputs, output) -> None:
    a, _, h0, reverse, chunk, block = inputs
    ctx.save_for_backward(a, output, h0)
    ctx.options = (reverse, chunk, block)


def _backward(ctx, gh: Tensor):
    a, h, h0 = ctx.saved_tensors
    da, db, dh0 = _scan_backward_op(a, h, h0, gh, *ctx.options)
    return da, db, dh0, None, None, None


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _validate(a: object, b: object, h0: object) -> None:
    for name, value in (("a", a), ("b", b), ("h0", h0)):
        if not isinstance(value, Tensor):
            raise TypeError(f"linear_scan: `{name}` must be a torch.Tensor, got {type(value)}")
    assert isinstance(a, Tensor) and isinstance(b, Tensor) and isinstance(h0, Tensor)
    if b.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"linear_scan: `b` has dtype {b.dtype}; expected one of {SUPPORTED_DTYPES}")
    for name, value in (("a", a), ("h0", h0)):
        if value.dtype != b.dtype:
            raise TypeError(f"linear_scan: `{name}` has dtype {value.dtype} but `b` has {b.dtype}")
        if value.device != b.device:
            raise ValueError(f"linear_scan: `{name}` is on {value.device} but `b` is on {b.device}")
    if b.dim() != 3 or b.shape[1] == 0:
        raise ValueError(f"linear_scan: `b` must be (B, T, N) with T >= 1, got {_shape(b)}")
    B, T, N = b.shape
    if a.dim() != 3 or a.shape[0] not in (1, B) or a.shape[1] not in (1, T) or a.shape[2] != N:
        raise ValueError(
            f"linear_scan: `a` has shape {_shape(a)}; expected ({B} or 1, {T} or 1, {N})"
        )
    if tuple(h0.shape) != (B, N):
        raise ValueError(f"linear_scan: `h0` has shape {_shape(h0)}; expected ({B}, {N})")


def linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    reverse: bool = False,
    *,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> Tensor:
    """h_t = a_t h_{t−1} + b_t along dim 1 (h_t = a_t h_{t+1} + b_t when `reverse`).

    Args:
        a: decays (B or 1, T or 1, N): size 1 broadcasts over the batch or time.
        b: inputs (B, T, N): float16, bfloat16, float32, float64, complex64 or complex128.
        h0: initial state (B, N).
        reverse: scan from t = T − 1 down to 0.
        chunk, block: steps per chunk and channels per program (powers of two).

    Returns:
        h (B, T, N) in b's dtype, differentiable in a, b and h0.
    """
    _validate(a, b, h0)
    for name, value in (("chunk", chunk), ("block", block)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"linear_scan: `{name}` must be a power of two, got {value}")
    return _scan_op(a, b, h0, bool(reverse), int(chunk), int(block))


# The name every backend of the op exports, for `memrnn.ops.dispatch`.
scan = linear_scan

__all__ = ["SUPPORTED_DTYPES", "linear_scan", "scan"]
