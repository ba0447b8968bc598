"""`torch.compile(fullgraph=True)` of the parallel units on CPU: no graph break, same results.

Under compile the dispatcher's `auto` passes over the numba kernels (dynamo cannot trace them)
and takes the torch ops or the loop, so the compiled unit must match the eager one (which ran
the numba kernels) in outputs, final state and gradients. `aot_eager` keeps compile time small
while still tracing forward and backward. The SRC's default starting state is a fixed point
solved eagerly and cached, so the state is passed in.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.units import UNITS

PARALLEL = sorted(
    name for name, cls in UNITS.items() if "parallel" in cls.modes and name not in ("lmu",)
)


def _outputs_and_grads(run: Any, unit: Any, x: torch.Tensor) -> list:
    x = x.clone().requires_grad_()
    # A fresh starting state each run: it may hang off a learned parameter (BMRU's h0).
    y, final = run(x, unit.init_state(x.shape[0]))
    leaves = [s for s in torch.utils._pytree.tree_leaves(final) if isinstance(s, torch.Tensor)]
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    loss = loss + sum(s.real.sum() for s in leaves)
    params = [p for p in unit.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return [y, *leaves, *(g for g in grads if g is not None)]


def _check_fullgraph(name: str) -> None:
    cls = UNITS[name]
    torch.manual_seed(0)
    unit = cls(3, 4, **cls.example_kwargs)
    x = 2.0 * torch.randn(2, 9, 3)
    eager = _outputs_and_grads(unit, unit, x)
    torch._dynamo.reset()
    compiled = torch.compile(unit, fullgraph=True, backend="aot_eager")
    traced = _outputs_and_grads(compiled, unit, x)
    assert len(eager) == len(traced)
    for i, (a, b) in enumerate(zip(eager, traced, strict=True)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=f"{name}: tensor {i}")


def test_bmru_compiles_fullgraph_and_matches_eager() -> None:
    _check_fullgraph("bmru")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PARALLEL if n != "bmru"])
def test_parallel_unit_compiles_fullgraph_and_matches_eager(name: str) -> None:
    _check_fullgraph(name)


def test_auto_skips_numba_while_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    device, dtype = torch.device("cpu"), torch.float32
    if not dispatch.is_available("mru", "numba", device, dtype):
        pytest.skip("numba is not installed")
    assert dispatch.resolve("mru", "auto", device, dtype) == "numba"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.resolve("mru", "auto", device, dtype) == "torch"
    assert dispatch.resolve("brc", "auto", device, dtype) == "naive"


def test_a_backend_not_loaded_before_tracing_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.delitem(dispatch._MODULES, ("mru", "numba"), raising=False)
    with pytest.raises(dispatch.BackendUnavailable, match="not loaded before torch.compile"):
        dispatch.backend_module("mru", "numba")


def test_preload_rejects_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match=r"dispatch.preload\('mru'\): unknown backend 'cuda'"):
        dispatch.preload("mru", "cuda")


def test_bmru_compiles_fullgraph_under_bf16_autocast() -> None:
    # The projections' autocast (memrnn.units.base.autocast_linear) traces as well.
    torch.manual_seed(0)
    unit = UNITS["bmru"](3, 8)
    x = torch.randn(2, 9, 3)
    torch._dynamo.reset()
    compiled = torch.compile(unit, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = unit(x)
        y, state = compiled(x)
    assert y.dtype == state.h.dtype == torch.float32
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
