"""Whole units with the dispatcher choosing as on CUDA, against their CPU paths.

`dispatch_as("cuda")` makes `auto` pick the triton kernels for CPU tensors, which then run in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU). Each
parallel unit is run twice from the same weights, inputs and starting state: once as on the CPU
(numba kernels or torch ops) and once as on a GPU; outputs, final states and every gradient
must agree. Shapes are tiny: the interpreter costs about a millisecond per op.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.units import UNITS, RecurrentUnit

# Constructor arguments beyond (input_size, hidden_size); the epsilon family and a constant
# threshold ride on BMRU. Units registered later with a parallel mode are picked up below.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "bmru": ("bmru", {}),
    "bmru-constant": ("bmru", {"threshold": "constant"}),
    "epsilon-0.3": ("bmru", {"epsilon": 0.3}),
    "cmru": ("cmru", {}),
    "mingru": ("mingru", {}),
    "lru": ("lru", {}),
    "hybrid": ("hybrid", {"combine": "concat"}),
    "brc": ("brc", {}),
    "nbrc": ("nbrc", {}),
    "src": ("src", {}),
}
# The constant-threshold MRU runs `mru_scan`, which has no triton kernel: torch ops on CUDA.
_TORCH_ON_CUDA = {"bmru-constant"}
_COVERED = {name for name, _ in CASES.values()}
# Parallel units whose ops have no triton kernel (the LMU's convolution runs torch ops, the
# Transformer's attention scaled_dot_product_attention).
_NO_TRITON = {"plmu", "lmu", "transformer"}
for _name, _cls in sorted(UNITS.items()):
    if "parallel" in _cls.modes and _name not in _COVERED | _NO_TRITON:
        CASES[_name] = (_name, dict(_cls.example_kwargs))


def _run(unit: RecurrentUnit, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, final state and the gradients of a loss reaching both, w.r.t. x and weights."""
    x = x.clone().requires_grad_()
    y, state = unit(x)
    states = [s for s in torch.utils._pytree.tree_leaves(state) if isinstance(s, torch.Tensor)]
    gen = torch.Generator().manual_seed(2)
    loss = (y * torch.randn(y.shape, generator=gen)).sum()
    loss = loss + sum((s.real * torch.randn(s.shape, generator=gen)).sum() for s in states)
    params = [p for p in unit.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return [y, *states, *(g for g in grads if g is not None)]


@pytest.fixture
def chosen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backends the dispatcher resolves to while the test runs."""
    seen: list[str] = []
    resolve = dispatch.resolve

    def spy(*args: Any, **kwargs: Any) -> str:
        seen.append(resolve(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(dispatch, "resolve", spy)
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_unit_matches_cpu_path_when_dispatched_as_cuda(
    case: str, triton_kernels: Any, chosen: list[str]
) -> None:
    name, kwargs = CASES[case]
    torch.manual_seed(0)
    unit = UNITS[name](3, 4, **kwargs)
    # Inputs large enough that the threshold units write (and the SRC spikes) now and then.
    x = 2.0 * torch.randn(2, 9, 3)
    cpu = _run(unit, x)
    cpu_backends = set(chosen)
    chosen.clear()
    with dispatch.dispatch_as("cuda"):
        gpu = _run(unit, x)
    if case not in _TORCH_ON_CUDA:
        assert "triton" in chosen, f"{case}: no triton kernel chosen ({sorted(set(chosen))})"
    assert "triton" not in cpu_backends
    assert len(cpu) == len(gpu)
    for i, (a, b) in enumerate(zip(cpu, gpu, strict=True)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=f"{case}: tensor {i}")


def test_dispatch_as_changes_the_choice_only_inside_the_block() -> None:
    device, dtype = torch.device("cpu"), torch.float32
    with dispatch.dispatch_as("cuda"):
        assert dispatch.unavailable_reason("mru", "numba", device, dtype) is not None
    assert dispatch._seen_type(device) == "cpu"


def test_dispatch_as_rejects_an_unknown_device_type() -> None:
    with pytest.raises(ValueError, match="dispatch_as: `device_type` must be 'cpu' or 'cuda'"):
        with dispatch.dispatch_as("tpu"):
            pass
