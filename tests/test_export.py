"""Exported step functions (torch.export, ONNX) equal the eager step."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from memrnn.export import StepModule, example_inputs, export_onnx, export_step, run_onnx
from memrnn.models import create_model
from memrnn.models.block import build_unit
from memrnn.units import UNITS, BMRUState

HAS_ONNX = importlib.util.find_spec("onnx") is not None
# The ONNX exporters have no complex arithmetic (aten.exp on a complex tensor has no lowering).
COMPLEX_UNITS = {"lru": "complex recurrence", "hybrid": "contains a complex LRU branch"}


def _unit(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unit(name, 3, 5, **UNITS[name].example_kwargs).eval()


def _assert_same(
    got: list[torch.Tensor] | tuple[torch.Tensor, ...],
    expected: tuple[torch.Tensor, ...],
    tol: float,
) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert torch.allclose(g.to(e.dtype), e, atol=tol, rtol=tol)


def _steps_agree(run, step: StepModule, batch: int, n: int, tol: float) -> None:
    """Runs `n` steps with the exported function and the eager one, carrying each's state."""
    args = example_inputs(step, batch)
    exported_state, eager_state = list(args[1:]), list(args[1:])
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x_t = torch.randn(args[0].shape, generator=gen, dtype=args[0].dtype)
        with torch.no_grad():
            expected = step(x_t, *eager_state)
        got = run(x_t, *exported_state)
        _assert_same(got, expected, tol)
        exported_state, eager_state = list(got[1:]), list(expected[1:])


# A second or so per unit: five in the default run, the rest behind `slow`.
EXPORT_FAST = ("bmru", "gru", "lru", "mingru", "plmu")


@pytest.mark.parametrize(
    "name",
    [n if n in EXPORT_FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(UNITS)],
)
def test_exported_unit_step_equals_eager(name: str) -> None:
    unit = _unit(name)
    program = export_step(unit, batch_size=2)
    # The batch dim is dynamic: run at a batch size other than the example's.
    _steps_agree(program.module(), StepModule(unit), batch=3, n=4, tol=1e-6)


@pytest.mark.parametrize("name", ["bmru-small", "hybrid-small", "plmu-small"])
def test_exported_network_step_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    # seq_len gives the LMU's window (theta), as a task would.
    model = create_model(
        name, input_size=3, output_size=2, seq_len=16, head="mean", d_model=8
    ).eval()
    program = export_step(model, batch_size=2)
    _steps_agree(program.module(), StepModule(model), batch=4, n=3, tol=1e-5)


def test_exported_token_network_step() -> None:
    torch.manual_seed(0)
    model = create_model(
        "mingru-small",
        input_size=7,
        output_size=7,
        input_kind="tokens",
        head="next-token",
        d_model=8,
    ).eval()
    step = StepModule(model)
    program = export_step(model, batch_size=2)
    args = example_inputs(step, 5)
    _assert_same(program.module()(*args), step(*args), 1e-5)


def test_step_module_round_trips_state() -> None:
    unit = _unit("lru")
    step = StepModule(unit)
    state = unit.init_state(2)
    tensors = step.pack(state)
    assert not any(t.is_complex() for t in tensors)
    assert torch.equal(step.unpack(tensors).h, state.h)
    assert step.state_names == ["state.h"]
    with pytest.raises(ValueError, match="got 2 state tensors; expected 1"):
        step.unpack(tensors * 2)
    with pytest.raises(TypeError, match="no `init_state` method"):
        StepModule(torch.nn.Linear(2, 2))
    assert isinstance(StepModule(_unit("bmru")).unpack(step.pack(state)), BMRUState)


def test_export_errors() -> None:
    unit = _unit("bmru")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        export_step(unit, batch_size=1)
    with pytest.raises(ValueError, match="positive int"):
        export_step(unit, batch_size=0)
    static = export_step(unit, batch_size=1, dynamic_batch=False)
    _steps_agree(static.module(), StepModule(unit), batch=1, n=2, tol=1e-6)


# ONNX export takes seconds per unit: one in the default run, the rest behind `slow`.
ONNX_FAST = ("bmru",)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx is not installed")
@pytest.mark.parametrize(
    "name",
    [n if n in ONNX_FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(UNITS)],
)
def test_onnx_unit_step_equals_eager(name: str, tmp_path) -> None:
    if name in COMPLEX_UNITS:
        pytest.xfail(f"{name}: {COMPLEX_UNITS[name]}; ONNX has no complex tensors")
    unit = _unit(name)
    path = export_onnx(unit, tmp_path / f"{name}.onnx")
    _steps_agree(lambda *a: run_onnx(path, *a), StepModule(unit), batch=3, n=3, tol=1e-5)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx is not installed")
def test_onnx_network_step_equals_eager(tmp_path) -> None:
    import onnx

    torch.manual_seed(0)
    model = create_model("bmru-small", input_size=3, output_size=2, d_model=8).eval()
    path = export_onnx(model, tmp_path / "net.onnx")
    proto = onnx.load(path)
    # bmru-small's blocks carry a conv buffer beside the unit state (BlockState(unit, conv)).
    names = [i.name for i in proto.graph.input][:3]
    assert names == ["x_t", "state_layers_0_unit_h", "state_layers_0_conv"]
    assert proto.graph.output[0].name == "y_t"
    _steps_agree(lambda *a: run_onnx(path, *a), StepModule(model), batch=2, n=3, tol=1e-5)
