"""Test-wide settings.

Triton kernels (memrnn.ops.*.triton) run through Triton's interpreter on machines without a
CUDA device: the interpreter is chosen when a kernel is defined (at import of
`memrnn.ops._triton`), so TRITON_INTERPRET is set here, before any test imports one, and only
where no CUDA device exists (where compiled kernels could not run anyway).
"""

import os
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _mru_layer_reference(x, w_in, b_in, h0, w_out, b_out, epsilon, surrogate, sharpness):
    from memrnn.units.mru import _mru_recurrence

    N = w_in.shape[0] // 2
    p = F.linear(x, w_in, b_in)
    h, rate = _mru_recurrence(
        p[..., :N], p[..., N:], h0, epsilon, surrogate, sharpness, "reference", beta_abs=True
    )
    return F.linear(h, w_out, b_out), h[:, -1], rate


def _mingru_layer_reference(x, weight, bias, h0):
    from memrnn.units.mingru_native import mingru_layer_torch

    return mingru_layer_torch(x, weight, bias, h0)


def _lru_layer_reference(u, w_in, lam, gamma, h0, w_out, d):
    from memrnn.units.lru_native import lru_layer_torch

    return lru_layer_torch(u, w_in, lam, gamma, h0, w_out, d)


def _scan_reference(a, b, h0, reverse=False):
    from memrnn.scan.reference import reference_scan

    return reference_scan(a, b, h0, reverse)


@pytest.fixture
def triton_reference() -> SimpleNamespace:
    """The CPU ground truth of each op (a plain loop for the scan, torch ops for the layers)."""
    return SimpleNamespace(
        scan=_scan_reference,
        mru_layer=_mru_layer_reference,
        mingru_layer=_mingru_layer_reference,
        lru_layer=_lru_layer_reference,
    )


@pytest.fixture
def triton_kernels():
    """Skips cleanly without triton; on a machine without CUDA, checks that the kernels are
    the interpreter's (they would be compiled ones had something imported them earlier)."""
    pytest.importorskip("triton")
    from memrnn.ops import _triton

    if not torch.cuda.is_available():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(_triton._apply_kernel, InterpretedFunction):
            pytest.fail("memrnn.ops._triton was imported before TRITON_INTERPRET was set")
    return _triton
