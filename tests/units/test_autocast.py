"""Under bfloat16 autocast the units' projections run bfloat16 GEMMs; the recurrence stays float32.

Checked from what runs: every matrix product the unit issues is recorded (a TorchDispatchMode
below autocast sees the dtypes autocast chose), and every tensor handed to a recurrence op
(`memrnn.ops.dispatch.implementation`) is recorded too.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memrnn.ops import dispatch
from memrnn.units import UNITS

GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "bmru": ("bmru", {}),
    "bmru-constant": ("bmru", {"threshold": "constant"}),
    "cmru": ("cmru", {}),
    "mingru": ("mingru", {}),
    "lru": ("lru", {}),
    "hybrid": ("hybrid", {"combine": "concat"}),
    "brc": ("brc", {}),
    "nbrc": ("nbrc", {}),
    "src": ("src", {}),
}
# Parallel units registered later are picked up (the LMU's own matrices stay float32).
for _name, _cls in sorted(UNITS.items()):
    if "parallel" in _cls.modes and _name not in {n for n, _ in CASES.values()} | {"plmu", "lmu"}:
        CASES[_name] = (_name, dict(_cls.example_kwargs))


class _GemmDtypes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in GEMMS:
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def op_input_dtypes(monkeypatch: pytest.MonkeyPatch) -> set[torch.dtype]:
    """The dtypes of the floating tensors the recurrence ops receive during the test."""
    seen: set[torch.dtype] = set()
    implementation = dispatch.implementation

    def spy(op: str, backend: str, name: str) -> Any:
        run = implementation(op, backend, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, torch.Tensor) and arg.is_floating_point():
                    seen.add(arg.dtype)
            return run(*args, **kwargs)

        return recorded

    monkeypatch.setattr(dispatch, "implementation", spy)
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_projections_follow_autocast_and_the_recurrence_stays_float32(
    case: str, op_input_dtypes: set[torch.dtype]
) -> None:
    name, kwargs = CASES[case]
    torch.manual_seed(0)
    unit = UNITS[name](3, 16, **kwargs)
    x = 2.0 * torch.randn(4, 20, 3)
    expected, _ = unit(x)
    op_input_dtypes.clear()
    gemms = _GemmDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), gemms:
        y, state = unit(x)
    assert torch.bfloat16 in gemms.dtypes, f"{case}: no bfloat16 GEMM ({gemms.dtypes})"
    assert op_input_dtypes <= {torch.float32}, f"{case}: recurrence got {op_input_dtypes}"
    assert y.dtype == torch.float32
    for leaf in torch.utils._pytree.tree_leaves(state):
        # (Step counters, such as the Transformer cache's, are int64.)
        assert leaf.dtype in (torch.float32, torch.complex64, torch.int64), f"{case}: {leaf.dtype}"
    # bfloat16 keeps 8 significant bits: the result is close to float32's, not equal. (A
    # threshold unit's gate may flip where |c| ≈ β, so the check is on the mean error.)
    error = (y - expected).abs().mean() / expected.abs().mean()
    assert error < 0.05, f"{case}: relative error {error:.3g}"
