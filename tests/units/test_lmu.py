"""Legendre memory and LMU layers: discretisation vs scipy, settings agree, decoding, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor

from memrnn.ops.lti import DIRECT_FFT_CROSSOVER
from memrnn.ops.lti.torch import fft_causal_conv
from memrnn.units import UNITS
from memrnn.units.lmu import (
    LMU,
    LegendreMemory,
    LMUCell,
    LMUState,
    ParallelLMU,
    impulse_response,
    legendre_matrices,
    legendre_system,
    lmu_decode,
    psmnist_parameter_count,
    truncation_length,
)

signal = pytest.importorskip("scipy.signal")

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# Settings of the layer by one name each: a convolution of the parallel mode ("parallel": the
# automatic one), the last-step readout ("final"), or the recurrent mode.
FULL_MODES = ("fft", "direct", "parallel")


# -- discretisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("theta", [1.0, 10.0, 100.0, 784.0])
def test_zoh_matches_scipy(order: int, theta: float) -> None:
    a, b = legendre_matrices(order)
    want_a, want_b, *_ = signal.cont2discrete(
        (a.numpy() / theta, b.numpy()[:, None] / theta, np.eye(order), np.zeros((order, 1))),
        dt=1.0,
        method="zoh",
    )
    a_bar, b_bar = legendre_system(order, theta)
    assert a_bar.dtype == b_bar.dtype == torch.float64
    assert a_bar.shape == (order, order) and b_bar.shape == (order,)
    np.testing.assert_allclose(a_bar.numpy(), want_a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b_bar.numpy(), want_b[:, 0], rtol=0, atol=1e-12)


def test_legendre_matrices_follow_the_formula() -> None:
    a, b = legendre_matrices(3)
    want_a = torch.tensor(
        [[-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [-5.0, 5.0, -5.0]], dtype=torch.float64
    )
    torch.testing.assert_close(a, want_a)
    torch.testing.assert_close(b, torch.tensor([1.0, -3.0, 5.0], dtype=torch.float64))


@pytest.mark.parametrize(("order", "theta"), [(1, 1.0), (8, 16.0), (64, 10.0), (200, 784.0)])
def test_zoh_is_stable(order: int, theta: float) -> None:
    a_bar, _ = legendre_system(order, theta)
    assert torch.linalg.eigvals(a_bar).abs().max().item() < 1.0


def test_euler_warns_when_unstable_and_only_then() -> None:
    with pytest.warns(RuntimeWarning, match="Euler discretisation is unstable"):
        legendre_system(16, 10.0, discretizer="euler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a_bar, b_bar = legendre_system(4, 100.0, discretizer="euler")
    a, b = legendre_matrices(4)
    torch.testing.assert_close(a_bar, torch.eye(4, dtype=torch.float64) + a / 100.0)
    torch.testing.assert_close(b_bar, b / 100.0)


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
def test_impulse_response_is_powers_times_b(length: int) -> None:
    a_bar, b_bar = legendre_system(6, 20.0)
    want, v = [], b_bar
    for _ in range(length):
        want.append(v)
        v = a_bar @ v
    got = impulse_response(a_bar, b_bar, length)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-12, atol=1e-14)
    cached = LegendreMemory(6, 20.0).impulse(length, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(cached, got, rtol=1e-12, atol=1e-14)


def test_memory_decodes_a_smooth_delayed_window() -> None:
    """Order 8, θ = 50: u(t − rθ) comes back within 0.01 (signal amplitude 1.5) for every r.

    With zero-order hold the step value u_t is held over (t − 1, t], so the memory holds the
    smooth signal advanced by half a step: the reference is u(t − rθ + 1/2).
    """
    theta, steps = 50.0, 400
    t = torch.arange(1, steps + 1, dtype=torch.float64)

    def smooth(tt: Tensor) -> Tensor:
        return torch.sin(2 * math.pi * tt / 100) + 0.5 * torch.cos(2 * math.pi * tt / 170)

    h = LegendreMemory(8, theta).impulse(steps, torch.float64, torch.device("cpu"))
    m = fft_causal_conv(smooth(t)[None, :, None], h)[0, :, 0]  # (T, d)
    r = torch.linspace(0, 1, 21, dtype=torch.float64)
    decoded = lmu_decode(m, r)  # (T, R)
    want = smooth(t[:, None] - r * theta + 0.5)
    # After the first window the memory has seen a full θ of input.
    err = (decoded[100:] - want[100:]).abs().max().item()
    assert err < 0.01
    assert lmu_decode(m[-1], 0.5).shape == ()


# -- every mode computes the same thing ----------------------------------------------------------
def _layer(memory_d: int, dtype: torch.dtype, mode: str = "parallel", **kwargs) -> ParallelLMU:
    torch.manual_seed(0)
    layer = ParallelLMU(3, 5, order=8, theta=16, memory_d=memory_d, dtype=dtype, **kwargs)
    _configure(layer, mode)
    return layer


def _configure(layer: ParallelLMU, setting: str) -> None:
    layer.mode = "recurrent" if setting == "recurrent" else "parallel"
    layer.readout = "final" if setting == "final" else "sequence"
    layer.conv = setting if setting in ("fft", "direct") else "auto"


def _run(
    layer: ParallelLMU, x: Tensor, mode: str, state: LMUState | None = None, last: bool = False
):
    _configure(layer, mode)
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y, final = layer(x, state)
    if last:
        y = y[:, -1:]
    loss = (y**2).sum() + (final.m**2).sum()
    inputs = [x] + ([state.m] if state is not None else [])
    grads = torch.autograd.grad(loss, inputs + list(layer.parameters()))
    return y.detach(), final.m.detach(), grads


def _assert_same(got, want, tol: float) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(got[1], want[1], rtol=tol, atol=tol)
    for a, b in zip(got[2], want[2], strict=True):
        # Gradients are sums over T steps; compare relative to their largest entry.
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", [1, 7, 100, 784])
@pytest.mark.parametrize("memory_d", [1, 4])
def test_every_mode_agrees_with_recurrent(memory_d: int, steps: int, dtype: torch.dtype) -> None:
    layer = _layer(memory_d, dtype)
    x = torch.randn(2, steps, 3, generator=torch.Generator().manual_seed(steps), dtype=dtype)
    ref = _run(layer, x, "recurrent")
    assert ref[0].shape == (2, steps, 5) and ref[1].shape == (2, memory_d, 8)
    for mode in FULL_MODES:
        _assert_same(_run(layer, x, mode), ref, TOLERANCE[dtype])
    # "final" returns the last step only: compare with a loss on the last step.
    _assert_same(_run(layer, x, "final"), _run(layer, x, "recurrent", last=True), TOLERANCE[dtype])


@pytest.mark.parametrize("mode", ["fft", "direct", "final", "recurrent"])
@pytest.mark.parametrize("memory_d", [1, 4])
def test_chunks_with_a_carried_state_equal_one_call(memory_d: int, mode: str) -> None:
    layer = _layer(memory_d, torch.float64, mode=mode)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 90, 3, generator=gen, dtype=torch.float64)
    m0 = torch.randn(2, memory_d, 8, generator=gen, dtype=torch.float64)
    y_full, s_full = layer(x, LMUState(m0))
    state, ys = LMUState(m0), []
    for chunk in x.split([1, 36, 53], dim=1):
        y, state = layer(chunk, state)
        ys.append(y)
    torch.testing.assert_close(state.m, s_full.m, rtol=1e-10, atol=1e-10)
    y_chunks = ys[-1] if mode == "final" else torch.cat(ys, dim=1)
    torch.testing.assert_close(y_chunks, y_full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["fft", "direct", "final"])
def test_gradient_of_the_initial_state_matches_recurrent(mode: str) -> None:
    layer = _layer(2, torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64)
    m0 = torch.randn(2, 2, 8, generator=gen, dtype=torch.float64).requires_grad_()
    last = mode == "final"
    _assert_same(
        _run(layer, x, mode, LMUState(m0), last),
        _run(layer, x, "recurrent", LMUState(m0), last),
        1e-10,
    )


def test_step_streams_what_the_parallel_forward_computed() -> None:
    layer = _layer(4, torch.float64, mode="fft")
    x = torch.randn(3, 40, 3, dtype=torch.float64)
    y, final = layer(x[:, :30])
    state, ys = final, []
    for x_t in x[:, 30:].unbind(1):
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
    y_all, final_all = layer(x)
    torch.testing.assert_close(torch.stack(ys, 1), y_all[:, 30:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.m, final_all.m, rtol=1e-10, atol=1e-10)


def test_truncated_direct_convolution_stays_within_its_bound() -> None:
    """‖m_t(truncated) − m_t‖ ≤ tol · ‖H_{0:T}‖_F · ‖u_{1:t}‖ (truncation_length's bound)."""
    tol, steps = 1e-3, 300
    layer = ParallelLMU(
        1,
        8,
        order=8,
        theta=30,
        conv="direct",
        hidden_activation="identity",
        truncation_tol=tol,
        input_skip=False,
        dtype=torch.float64,
    )
    # W_m = I and b_o = 0 make the output the memory itself.
    with torch.no_grad():
        layer.memory_out.weight.copy_(torch.eye(8))
        layer.memory_out.bias.zero_()
    x = torch.randn(2, steps, 1, dtype=torch.float64)
    m_trunc, _ = layer(x)
    layer.conv = "fft"
    m_exact, _ = layer(x)
    h = layer.memory.impulse(steps, torch.float64, torch.device("cpu"))
    taps = truncation_length(h, tol)
    assert 1 < taps < steps
    assert layer.memory.impulse(steps, torch.float64, torch.device("cpu"), tol).shape[0] == taps
    u = layer.encoder(x)[..., 0]  # (B, T)
    bound = tol * torch.linalg.norm(h) * u.pow(2).cumsum(1).sqrt()  # (B, T)
    err = torch.linalg.norm(m_trunc - m_exact, dim=-1)  # (B, T)
    assert (err <= bound + 1e-12).all()
    assert err.max() > 0


def test_truncation_length_drops_a_tail_below_the_tolerance() -> None:
    h = LegendreMemory(8, 30.0).impulse(500, torch.float64, torch.device("cpu"))
    for tol in (1e-2, 1e-4, 1e-6):
        taps = truncation_length(h, tol)
        assert torch.linalg.norm(h[taps:]) <= tol * torch.linalg.norm(h)
        assert torch.linalg.norm(h[taps - 1 :]) > tol * torch.linalg.norm(h)
    assert truncation_length(h, 0.0) == 500


# -- auto mode and caching -----------------------------------------------------------------------
def test_auto_rule() -> None:
    layer = ParallelLMU(1, 4, order=4, theta=8)
    assert layer.mode == "parallel" and layer.conv == "auto" and layer.readout == "sequence"
    assert layer.resolve_conv(DIRECT_FFT_CROSSOVER) == "fft"
    assert layer.resolve_conv(DIRECT_FFT_CROSSOVER - 1) == "direct"
    layer.conv = "fft"
    assert layer.resolve_conv(3) == "fft"


def test_final_readout_gives_the_last_step() -> None:
    torch.manual_seed(0)
    layer = ParallelLMU(2, 4, order=6, theta=12, readout="final", dtype=torch.float64)
    x = torch.randn(3, 50, 2, dtype=torch.float64)
    y_last, s_last = layer(x)
    layer.mode = "recurrent"
    y_rec, s_rec = layer(x)
    layer.readout, layer.mode, layer.conv = "sequence", "parallel", "fft"
    y_full, _ = layer(x)
    assert y_last.shape == y_rec.shape == (3, 1, 4)
    torch.testing.assert_close(y_last, y_full[:, -1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_rec, y_full[:, -1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_last.m, s_rec.m, rtol=1e-10, atol=1e-10)


def test_impulse_response_is_built_per_length_and_not_saved() -> None:
    layer = ParallelLMU(1, 4, order=4, theta=8, conv="fft")
    layer(torch.randn(1, 10, 1))
    y_long, _ = layer(torch.randn(1, 3000, 1))
    assert y_long.shape == (1, 3000, 4)
    lengths = {key[1] for key in layer.memory._cache if key[0] == "H"}
    assert {10, 3000} <= lengths
    assert set(layer.state_dict()) == {n for n, _ in layer.named_parameters()}
    assert {"A_bar", "B_bar"} <= {n for n, _ in layer.named_buffers()}
    for steps in range(1, 60):
        layer.memory.impulse(steps, torch.float32, torch.device("cpu"))
    assert len(layer.memory._cache) <= layer.memory.cache_size


def test_fixed_matrices_are_recast_from_float64() -> None:
    layer = ParallelLMU(1, 4, order=8, theta=16)
    assert layer.A_bar.dtype == torch.float32
    layer = layer.double()
    a_bar, b_bar = legendre_system(8, 16.0)
    assert torch.equal(layer.A_bar, a_bar) and torch.equal(layer.B_bar, b_bar)
    assert not any(p is layer.A_bar for p in layer.parameters())


# -- the original cell and the auto-picking layer ------------------------------------------------
def test_lmu_without_feedback_is_the_parallel_layer() -> None:
    flags = {"hidden_to_memory": False, "memory_to_memory": False, "hidden_to_hidden": False}
    torch.manual_seed(0)
    layer = LMU(3, 5, order=8, theta=16, dtype=torch.float64, **flags)
    cell = LMUCell(3, 5, order=8, theta=16, dtype=torch.float64, **flags)
    assert isinstance(layer.core, ParallelLMU) and layer.feedback_free
    assert layer.modes == ParallelLMU.modes and layer.mode == "parallel"
    with torch.no_grad():
        cell.input_encoder.weight.copy_(layer.core.encoder.weight)
        cell.memory_out.load_state_dict(layer.core.memory_out.state_dict())
        cell.input_out.load_state_dict(layer.core.input_out.state_dict())
    assert sum(p.numel() for p in cell.parameters()) == sum(p.numel() for p in layer.parameters())
    x = torch.randn(2, 70, 3, dtype=torch.float64)
    y_cell, s_cell = cell(x)
    y_par, s_par = layer(x)
    torch.testing.assert_close(y_par, y_cell, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_par.m, s_cell.m, rtol=1e-10, atol=1e-10)
    layer.mode, layer.backend = "recurrent", "naive"
    assert layer.core.mode == "recurrent" and layer.core.backend == "naive"


@pytest.mark.parametrize("flag", ["hidden_to_memory", "memory_to_memory", "hidden_to_hidden"])
def test_lmu_with_any_feedback_is_the_recurrent_cell(flag: str) -> None:
    flags = {"hidden_to_memory": False, "memory_to_memory": False, "hidden_to_hidden": False}
    layer = LMU(2, 4, order=6, theta=10, **{**flags, flag: True})
    assert isinstance(layer.core, LMUCell) and layer.modes == ("recurrent",)
    with pytest.raises(ValueError, match="unknown mode 'fft'"):
        layer.mode = "fft"
    y, state = layer(torch.randn(2, 9, 2))
    assert y.shape == (2, 9, 4) and state.m.shape == (2, 1, 6) and state.h.shape == (2, 4)


def test_feedback_reaches_the_memory() -> None:
    torch.manual_seed(0)
    cell = LMUCell(2, 4, order=6, theta=10)
    y, _ = cell(torch.randn(2, 20, 2))
    y.sum().backward()
    assert cell.hidden_encoder.weight.grad.abs().sum() > 0
    assert cell.memory_encoder.weight.grad.abs().sum() > 0
    assert cell.hidden_out.weight.grad.abs().sum() > 0


def test_registered_with_small_examples() -> None:
    assert UNITS["plmu"] is ParallelLMU and UNITS["lmu"] is LMU
    assert ParallelLMU.example_kwargs == {"order": 8, "theta": 16}
    assert LMU.example_kwargs == {"order": 8, "theta": 16}


# -- the psMNIST configuration -------------------------------------------------------------------
def test_psmnist_parameter_count_is_the_papers(capsys: pytest.CaptureFixture[str]) -> None:
    total = psmnist_parameter_count(verbose=True)
    assert total == 1 * 1 + 1 + 468 * 346 + 346 + 346 + 346 * 10 + 10 == 166_092
    assert abs(total / 165_000 - 1) < 0.01
    assert abs(psmnist_parameter_count(input_skip=False) / 165_000 - 1) < 0.01
    assert "166,092" in capsys.readouterr().out


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ParallelLMU, LMUCell, LMU])
def test_bad_hyperparameters_are_refused(cls: type) -> None:
    with pytest.raises(ValueError, match="`order` must be a positive int"):
        cls(1, 4, order=0, theta=8)
    with pytest.raises(ValueError, match="`order` must be a positive int"):
        cls(1, 4, order=2.5, theta=8)
    with pytest.raises(ValueError, match="`theta` must be a positive number"):
        cls(1, 4, order=4, theta=0)
    with pytest.raises(ValueError, match="`theta` must be a positive number"):
        cls(1, 4, order=4, theta=-3.0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        cls(1, 4, order=4, theta=8, hidden_activation="swish")
    with pytest.raises(ValueError, match="unknown discretizer 'bilinear'"):
        cls(1, 4, order=4, theta=8, discretizer="bilinear")


def test_parallel_layer_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown mode 'fft'; expected one of \('parallel', 'recurrent'\)"
    ):
        ParallelLMU(1, 4, order=4, theta=8, mode="fft")
    with pytest.raises(ValueError, match=r"unknown conv 'raw'; expected one of \('auto', 'fft'"):
        ParallelLMU(1, 4, order=4, theta=8, conv="raw")
    with pytest.raises(ValueError, match=r"unknown readout 'last'; expected one of \('sequence'"):
        ParallelLMU(1, 4, order=4, theta=8, readout="last")
    with pytest.raises(ValueError, match="unknown backend 'fast'; expected one of"):
        ParallelLMU(1, 4, order=4, theta=8, backend="fast")
    with pytest.raises(RuntimeError, match="'numba' backend of op 'lti' is not available"):
        ParallelLMU(1, 4, order=4, theta=8, backend="numba")(torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        ParallelLMU(1, 4, order=4, theta=8, memory_activation="sigmoid")
    with pytest.raises(ValueError, match="`memory_d` must be a positive int"):
        ParallelLMU(1, 4, order=4, theta=8, memory_d=0)
    with pytest.raises(ValueError, match=r"`truncation_tol` must be None or in \[0, 1\)"):
        ParallelLMU(1, 4, order=4, theta=8, truncation_tol=2.0)
    layer = ParallelLMU(1, 4, order=4, theta=8, memory_d=2)
    wrong = LMUState(torch.zeros(3, 1, 4))
    with pytest.raises(ValueError, match=r"state.m has shape \(3, 1, 4\); expected \(3, 2, 4\)"):
        layer(torch.zeros(3, 5, 1), wrong)
    with pytest.raises(ValueError, match=r"state.m has shape \(3, 1, 4\); expected \(3, 2, 4\)"):
        layer.step(torch.zeros(3, 1), wrong)
    with pytest.raises(TypeError, match="must be a LMUState"):
        layer(torch.zeros(3, 5, 1), (torch.zeros(3, 2, 4),))


def test_function_errors() -> None:
    with pytest.raises(ValueError, match="unknown discretizer 'tustin'"):
        legendre_system(4, 8.0, discretizer="tustin")
    with pytest.raises(ValueError, match="`length` must be a positive int"):
        impulse_response(*legendre_system(4, 8.0), 0)
    with pytest.raises(ValueError, match=r"delays r must lie in \[0, 1\]"):
        lmu_decode(torch.zeros(4), 1.5)
    with pytest.raises(ValueError, match=r"`tol` must be in \[0, 1\)"):
        truncation_length(torch.ones(3, 2), -0.1)
