"""Property tests of the public functions on random shapes, dtypes and lengths.

The contract checked: a call either returns results of the documented shape (finite for
finite inputs) or raises ValueError/TypeError with a message; never another exception type
from deep inside torch, never a silently wrong shape, never a hang (small sizes and a
hypothesis deadline).

NaN semantics (checked below, not stated elsewhere): `linear_scan` propagates a NaN in `b`
(or `a`, or `h0`) to every later step of the same channel, on every backend, exactly as
the plain loop h_t = a_t h_{t-1} + b_t does (0 * NaN is NaN, so a zero decay does not stop
it); units propagate NaN inputs to NaN outputs rather than raising.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves

from memrnn.models import create_model
from memrnn.models.block import build_unit
from memrnn.ops.scan import linear_scan
from memrnn.ops.scan.naive import scan as reference_scan
from memrnn.units import UNITS

SETTINGS = settings(
    max_examples=25, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
CLEAR_ERRORS = (ValueError, TypeError)
FLOATS = (torch.float32, torch.float64)
ANY_DTYPES = (torch.float32, torch.float64, torch.int64, torch.complex64, torch.bool)


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.randint(-3, 4, shape, generator=gen, dtype=dtype)
    if dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=dtype) * 0.5
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)


@st.composite
def scan_args(draw: st.DrawFn) -> tuple:
    B, T, N = draw(st.integers(1, 3)), draw(st.integers(0, 9)), draw(st.integers(1, 4))
    b_shape = draw(st.sampled_from([(B, T, N), (B, T), (B, T, N, 2), (T, N)]))
    a_shape = draw(st.sampled_from(["same", "shared_batch", "shared_time", "wrong"]))
    if a_shape == "same":
        a_shape = b_shape
    elif a_shape == "shared_batch":
        a_shape = (1, *b_shape[1:])
    elif a_shape == "shared_time":
        a_shape = (b_shape[0], 1, *b_shape[2:]) if len(b_shape) > 1 else b_shape
    else:
        a_shape = (*b_shape[:-1], b_shape[-1] + 1)
    dtype = draw(st.sampled_from(ANY_DTYPES))
    a_dtype = dtype if draw(st.booleans()) else draw(st.sampled_from(ANY_DTYPES))
    h0 = draw(st.sampled_from(["none", "right", "wrong"]))
    backend = draw(st.sampled_from(["auto", "naive", "torch", "bogus"]))
    return b_shape, a_shape, dtype, a_dtype, h0, backend, draw(st.integers(0, 2**16))


@SETTINGS
@given(scan_args())
def test_linear_scan_result_or_clear_error(args: tuple) -> None:
    b_shape, a_shape, dtype, a_dtype, h0_kind, backend, seed = args
    a, b = _tensor(a_shape, a_dtype, seed), _tensor(b_shape, dtype, seed + 1)
    h0 = None
    if h0_kind != "none" and len(b_shape) >= 2:
        h0_shape = (b_shape[0], *b_shape[2:])
        if h0_kind == "wrong":
            h0_shape = (h0_shape[0] + 1, *h0_shape[1:])
        h0 = _tensor(h0_shape, dtype, seed + 2)
    try:
        h, h_last = linear_scan(a, b, h0, backend=backend)
    except CLEAR_ERRORS as err:
        assert str(err)
        return
    assert h.shape == b.shape and h.dtype == b.dtype
    assert h_last.shape == (b.shape[0], *b.shape[2:])
    assert torch.isfinite(h).all()
    # The plain loop on the broadcast decays is the ground truth.
    a_full = a.expand(b.shape).reshape(b.shape[0], b.shape[1], -1)
    h0_2 = torch.zeros_like(b[:, 0]) if h0 is None else h0
    expected = reference_scan(
        a_full, b.reshape(b.shape[0], b.shape[1], -1), h0_2.reshape(b.shape[0], -1)
    )
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-10
    assert torch.allclose(h.reshape(expected.shape), expected, atol=tol, rtol=tol)


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 12),
    st.integers(1, 3),
    st.data(),
    st.sampled_from(["auto", "naive", "torch"]),
    st.sampled_from(FLOATS),
)
def test_linear_scan_propagates_nan(
    B: int, T: int, N: int, data: st.DataObject, backend: str, dtype: torch.dtype
) -> None:
    t = data.draw(st.integers(0, T - 1))
    a = _tensor((B, T, N), dtype, T)
    if data.draw(st.booleans()):
        # Zero decays after the NaN: 0 * NaN is still NaN.
        a[:, t + 1 :] = 0
    b = _tensor((B, T, N), dtype, T + 1)
    b[0, t, 0] = float("nan")
    h, _ = linear_scan(a, b, backend=backend)
    assert torch.isnan(h[0, t:, 0]).all()
    expected = reference_scan(a, b, torch.zeros_like(b[:, 0]))
    assert torch.equal(torch.isnan(h), torch.isnan(expected))


@st.composite
def unit_inputs(draw: st.DrawFn) -> tuple:
    B, T = draw(st.integers(1, 3)), draw(st.integers(0, 7))
    D = 3
    shape_kind = draw(st.sampled_from(["ok", "ok", "ok", "wrong_features", "2d", "4d"]))
    shape = {"ok": (B, T, D), "wrong_features": (B, T, D + 1), "2d": (B, D), "4d": (B, T, D, 1)}[
        shape_kind
    ]
    dtype = draw(st.sampled_from(FLOATS + (torch.int64,)))
    # Parameters in the input's float dtype (mismatches are tested separately below).
    param_dtype = dtype if dtype.is_floating_point else draw(st.sampled_from(FLOATS))
    return shape, dtype, param_dtype, draw(st.booleans()), draw(st.integers(0, 2**16))


def _finite(tree: object) -> bool:
    leaves = [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]
    return all(torch.isfinite(t).all() for t in leaves if t.is_floating_point() or t.is_complex())


@pytest.mark.parametrize("name", sorted(UNITS))
@SETTINGS
@given(args=unit_inputs())
def test_unit_forward_and_step_result_or_clear_error(name: str, args: tuple) -> None:
    shape, dtype, param_dtype, use_state, seed = args
    torch.manual_seed(seed)
    unit = build_unit(name, 3, 4, **UNITS[name].example_kwargs).to(param_dtype)
    x = _tensor(shape, dtype, seed) * 2 - 1 if dtype != torch.int64 else _tensor(shape, dtype, 0)
    state = unit.init_state(shape[0], dtype=param_dtype) if use_state else None
    try:
        y, new_state = unit(x, state)
    except CLEAR_ERRORS as err:
        assert str(err)
        return
    assert y.shape == (shape[0], shape[1], unit.output_size), (name, tuple(y.shape))
    assert _finite((y, new_state))
    assert type(new_state) is type(unit.init_state(1, device="meta"))
    for got, ref in zip(
        tree_leaves(new_state), tree_leaves(unit.init_state(shape[0])), strict=True
    ):
        # A cache that starts empty (the full-attention Transformer's) holds one entry per step.
        grown = tuple(r if (d == 0 or r) else shape[1] for d, r in enumerate(ref.shape))
        assert got.shape in (ref.shape, grown)
    y_t, _ = unit.step(x[:, 0], new_state)
    assert y_t.shape == (shape[0], unit.output_size)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_dtype_mismatch_is_a_clear_error(name: str) -> None:
    unit = build_unit(name, 3, 4, **UNITS[name].example_kwargs)
    with pytest.raises(CLEAR_ERRORS):
        unit(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(CLEAR_ERRORS):
        unit.step(torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_nan_input_gives_nan_not_an_error(name: str) -> None:
    torch.manual_seed(0)
    unit = build_unit(name, 3, 4, **UNITS[name].example_kwargs)
    x = torch.randn(2, 5, 3)
    x[0, 2] = float("nan")
    y, _ = unit(x)
    assert y.shape == (2, 5, unit.output_size)
    assert torch.isfinite(y[1]).all()
    assert torch.isnan(y[0, 2:]).any()


@pytest.mark.parametrize("name", ["bmru-small", "lru-small", "plmu-small"])
@settings(
    max_examples=10, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    B=st.integers(1, 3),
    T=st.integers(0, 6),
    head=st.sampled_from(["last", "mean", "sequence"]),
    tokens=st.booleans(),
    dtype=st.sampled_from((torch.float32, torch.int64)),
)
def test_create_model_result_or_clear_error(
    name: str, B: int, T: int, head: str, tokens: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    model = create_model(
        name,
        input_size=5,
        output_size=2,
        seq_len=16,
        head=head,
        d_model=8,
        input_kind="tokens" if tokens else "real",
    )
    x = torch.randint(5, (B, T)) if tokens else torch.randn(B, T, 5)
    x = x.to(dtype)
    try:
        out, _ = model(x)
    except CLEAR_ERRORS as err:
        assert str(err)
        return
    expected = (B, T, 2) if head == "sequence" else (B, 2)
    assert out.shape == expected
    assert torch.isfinite(out).all()
