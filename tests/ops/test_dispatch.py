"""The backend vocabulary, availability and the automatic choice of `memrnn.ops.dispatch`."""

import types

import pytest
import torch

from memrnn.ops import dispatch
from memrnn.ops.scan import numba as scan_numba

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def fake_triton_scan():
    """A `triton` module for the scan, as a GPU kernel file would provide one."""
    module = types.SimpleNamespace(SUPPORTED_DTYPES=(torch.float32,), scan=None)
    dispatch._MODULES[("scan", "triton")] = module
    yield module
    dispatch.reset_probes()


def test_names_are_checked():
    assert dispatch.check_backend("numba", "X") == "numba"
    with pytest.raises(ValueError, match=r"X: unknown backend 'native'; expected one of \('auto'"):
        dispatch.check_backend("native", "X")
    with pytest.raises(ValueError, match="unknown backend None"):
        dispatch.check_backend(None, "X")


def test_a_missing_backend_module_is_unavailable_with_its_reason():
    with pytest.raises(dispatch.BackendUnavailable, match="'triton' backend of op 'lti' is not"):
        dispatch.backend_module("lti", "triton")
    assert not dispatch.is_available("brc", "torch", CPU, torch.float32)
    with pytest.raises(dispatch.BackendUnavailable, match="'torch' backend of op 'brc'"):
        dispatch.resolve("brc", "torch", CPU, torch.float32)


def test_compiled_backends_need_their_device_and_dtype():
    reason = dispatch.unavailable_reason("mingru", "numba", torch.device("meta"), torch.float32)
    assert reason is not None and "runs on cpu tensors" in reason
    reason = dispatch.unavailable_reason("mingru", "numba", CPU, torch.float16)
    assert reason is not None and "does not support dtype torch.float16" in reason
    with pytest.raises(dispatch.BackendUnavailable, match="runs on cpu tensors, got meta"):
        dispatch.resolve("mingru", "numba", torch.device("meta"), torch.float32)


def test_auto_on_cpu_takes_numba_where_it_runs_else_torch_else_naive(monkeypatch):
    expected = "numba" if scan_numba.AVAILABLE else "torch"
    assert dispatch.resolve("lru", "auto", CPU, torch.float64) == expected
    assert dispatch.resolve("lru", "auto", CPU, torch.float64, compiled=False) == "torch"
    assert dispatch.resolve("brc", "auto", torch.device("meta"), torch.float32) == "naive"
    monkeypatch.setattr(scan_numba, "AVAILABLE", False)
    assert dispatch.resolve("scan", "auto", CPU, torch.float32) == "torch"
    with pytest.raises(dispatch.BackendUnavailable, match="'numba' backend of op 'scan' needs"):
        dispatch.resolve("scan", "numba", CPU, torch.float32)


def test_a_triton_file_is_picked_up_on_cuda(fake_triton_scan):
    assert dispatch.resolve("scan", "auto", CUDA, torch.float32) == "triton"
    assert dispatch.resolve("scan", "triton", CUDA, torch.float32) == "triton"
    assert dispatch.resolve("scan", "auto", CUDA, torch.float32, triton_ok=False) == "torch"
    # A backend without the function asked for is passed over, or named, refused.
    assert dispatch.resolve("scan", "auto", CUDA, torch.float32, function="other") == "torch"
    with pytest.raises(dispatch.BackendUnavailable, match="has no other"):
        dispatch.resolve("scan", "triton", CUDA, torch.float32, function="other")
    # Complex scans and CPU tensors stay off it.
    assert dispatch.resolve("scan", "auto", CUDA, torch.complex64) == "torch"
    with pytest.raises(dispatch.BackendUnavailable, match="runs on cuda tensors, got cpu"):
        dispatch.resolve("scan", "triton", CPU, torch.float32)


def test_a_failing_probe_keeps_auto_off_a_backend(fake_triton_scan):
    def probe(backend, device, dtype):
        raise RuntimeError("no GPU here")

    assert dispatch.resolve("scan", "auto", CUDA, torch.float32, probe=probe) == "torch"
    # The result is kept: a probe that would pass now is not asked again.
    assert dispatch.resolve("scan", "auto", CUDA, torch.float32, probe=lambda *a: True) == "torch"
    dispatch.reset_probes()
    dispatch._MODULES[("scan", "triton")] = fake_triton_scan
    assert dispatch.resolve("scan", "auto", CUDA, torch.float32, probe=lambda *a: True) == "triton"
