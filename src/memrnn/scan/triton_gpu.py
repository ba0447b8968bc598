"""Triton GPU scan: one program per (batch row, block of channels), sequential over time.

Each program keeps its block of the state in registers and streams a, b and h through global
memory once, so the kernel is bandwidth-bound like the CPU kernel; parallelism comes from
B * ceil(M / BLOCK) programs. Accumulation is in float32 (float64 stays float64). Complex
dtypes are not handled here; the dispatcher sends them to the `tree` backend.

This module imports triton only when it is itself imported; `memrnn.scan` imports it only when
CUDA is available.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64)


@triton.jit
def _scan_kernel(
    a_ptr,
    b_ptr,
    h0_ptr,
    h_ptr,
    T,
    M,
    a_stride_b,
    a_stride_t,
    REVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # pragma: no cover - GPU only
    ib = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    state = tl.load(h0_ptr + ib * M + offs, mask=mask, other=0.0)
    for k in range(T):
        if REVERSE:
            t = T - 1 - k
        else:
            t = k
        av = tl.load(a_ptr + ib * a_stride_b + t * a_stride_t + offs, mask=mask, other=0.0)
        bv = tl.load(b_ptr + (ib * T + t) * M + offs, mask=mask, other=0.0)
        state = av * state + bv
        tl.store(h_ptr + (ib * T + t) * M + offs, state, mask=mask)


def triton_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Forward scan of (B, T, M) CUDA tensors; a: (B or 1, T or 1, M); h0: (B, M)."""
    if b.device.type != "cuda" or b.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"the 'triton' scan backend needs float32/64 CUDA tensors, got {b.dtype}"
        )
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    B, T, M = b.shape
    h = torch.empty_like(b)
    # Strides of a in elements; a zero stride broadcasts over batch or time.
    a_stride_b = a.shape[1] * M if a.shape[0] > 1 else 0
    a_stride_t = M if a.shape[1] > 1 else 0
    block = min(1024, triton.next_power_of_2(max(M, 16)))
    grid = (B, triton.cdiv(M, block))
    _scan_kernel[grid](a, b, h0, h, T, M, a_stride_b, a_stride_t, REVERSE=reverse, BLOCK=block)
    return h
