"""The native backend's output cache: memory is reused only once no tensor uses it."""

from __future__ import annotations

import threading

import pytest
import torch

from memrnn.ops import _cpu
from memrnn.ops.scan import linear_scan
from memrnn.ops.scan import numba as native_mod

pytestmark = pytest.mark.skipif(not native_mod.AVAILABLE, reason="numba is not installed")

# (B, T, N) float32 outputs of 2 MiB, above the cache's size threshold.
SHAPE = (2, 1024, 256)
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_cache():
    held, cap = _cpu.output_cache_bytes()
    _cpu.set_output_cache(0)
    _cpu.set_output_cache(64 * MIB)
    yield
    _cpu.set_output_cache(0)
    _cpu.set_output_cache(cap)


def _inputs(shape=SHAPE, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=gen, dtype=dtype) * 0.7
    b = torch.randn(shape, generator=gen, dtype=dtype)
    return a, b


def _span(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _overlap(x: torch.Tensor, y: torch.Tensor) -> bool:
    (x0, x1), (y0, y1) = _span(x), _span(y)
    return x0 < y1 and y0 < x1


def _scan(a, b):
    return native_mod.native_scan(a, b, torch.zeros(a.shape[0], a.shape[2], dtype=a.dtype))


def test_freed_output_memory_is_reused():
    a, b = _inputs()
    h = _scan(a, b)
    ptr = h.data_ptr()
    del h
    assert _scan(a, b).data_ptr() == ptr


def test_live_outputs_never_share_memory():
    a, b = _inputs()
    outputs = [_scan(a, b) for _ in range(4)]
    for i, x in enumerate(outputs):
        for y in outputs[i + 1 :]:
            assert not _overlap(x, y)


def test_a_view_keeps_its_memory():
    a, b = _inputs()
    h = _scan(a, b)
    view = h[:, 5:7]
    kept = view.clone()
    del h
    fresh = [_scan(a * 0.5, b + 1.0) for _ in range(3)]
    assert all(not _overlap(view, x) for x in fresh)
    assert torch.equal(view, kept)


def test_a_numpy_view_keeps_its_memory():
    a, b = _inputs()
    h = _scan(a, b)
    array = h.numpy()
    kept = array.copy()
    del h
    fresh = _scan(a * 0.5, b + 1.0)
    assert (array == kept).all()
    assert not _overlap(fresh, torch.from_numpy(array))


def test_gradients_kept_as_grad_are_not_overwritten():
    a, b = _inputs()
    a.requires_grad_()
    b.requires_grad_()
    h, _ = linear_scan(a, b, backend="numba")
    h.backward(torch.ones_like(h))
    first_a, first_b = a.grad, b.grad
    kept_a, kept_b = first_a.clone(), first_b.clone()
    a.grad = b.grad = None
    for _ in range(3):
        h, _ = linear_scan(a, b * 2.0, backend="numba")
        h.backward(torch.full_like(h, 3.0))
        assert not _overlap(first_a, a.grad) and not _overlap(first_b, b.grad)
        a.grad = b.grad = None
    assert torch.equal(first_a, kept_a) and torch.equal(first_b, kept_b)


def test_saved_outputs_survive_other_scans_before_backward():
    a, b = _inputs()
    expected = []
    for backend in ("naive", "numba"):
        leaf_a, leaf_b = a.clone().requires_grad_(), b.clone().requires_grad_()
        h, _ = linear_scan(leaf_a, leaf_b, backend=backend)
        loss = (h * h).sum()
        del h
        # Scans (and backward passes) in between must not reuse the saved h.
        for _ in range(3):
            x, y = _inputs(seed=1)
            x.requires_grad_()
            other, _ = linear_scan(x, y, backend=backend)
            other.sum().backward()
        loss.backward()
        expected.append((leaf_a.grad, leaf_b.grad))
    (ref_a, ref_b), (got_a, got_b) = expected
    torch.testing.assert_close(got_a, ref_a, rtol=2e-5, atol=2e-5 * ref_a.abs().max().item())
    torch.testing.assert_close(got_b, ref_b, rtol=2e-5, atol=2e-5 * ref_b.abs().max().item())


def test_cache_stays_under_its_cap():
    # Each 2 MiB output takes 4 MiB of cache (with its huge-page alignment slack).
    _cpu.set_output_cache(12 * MIB)
    a, b = _inputs()
    live = [_scan(a, b) for _ in range(5)]
    assert _cpu.output_cache_bytes() == (12 * MIB, 12 * MIB)
    assert all(x.data_ptr() % (2 * MIB) == 0 for x in live[:3])
    for i, x in enumerate(live):
        assert all(not _overlap(x, y) for y in live[i + 1 :])


def test_least_recently_used_free_buffers_go_first():
    _cpu.set_output_cache(12 * MIB)
    a, b = _inputs()
    live = [_scan(a, b) for _ in range(3)]
    ptrs = [x.data_ptr() for x in live]
    del live
    # Reusing the oldest makes it the most recently used.
    assert _scan(a, b).data_ptr() == ptrs[0]
    # A 4 MiB output needs 6 MiB: the two other free buffers make room.
    bigger = _scan(*_inputs(shape=(2, 2048, 256)))
    assert _cpu.output_cache_bytes()[0] == 10 * MIB
    assert _scan(a, b).data_ptr() == ptrs[0]
    del bigger


def test_switching_off_releases_free_buffers():
    a, b = _inputs()
    h = _scan(a, b)
    del h
    assert _cpu.output_cache_bytes()[0] > 0
    _cpu.set_output_cache(0)
    assert _cpu.output_cache_bytes() == (0, 0)
    h = _scan(a, b)
    torch.testing.assert_close(h, linear_scan(a, b, backend="naive")[0])
    assert _cpu.output_cache_bytes()[0] == 0


def test_switching_off_forgets_buffers_in_use():
    a, b = _inputs()
    h = _scan(a, b)
    kept = h.clone()
    _cpu.set_output_cache(0)
    assert _cpu.output_cache_bytes() == (0, 0)
    assert torch.equal(h, kept)


def test_small_outputs_are_not_cached():
    a, b = _inputs(shape=(2, 10, 4))
    _scan(a, b)
    assert _cpu.output_cache_bytes()[0] == 0


@pytest.mark.parametrize("dtype", native_mod.SUPPORTED_DTYPES)
def test_cached_outputs_match_reference_for_every_dtype(dtype):
    a, b = _inputs(shape=(2, 700, 300), dtype=dtype)
    expected = linear_scan(a, b, backend="naive")[0]
    for _ in range(2):
        h = _scan(a, b)
        assert h.dtype == dtype and h.shape == a.shape
        torch.testing.assert_close(h, expected)
        del h


def test_threads_get_distinct_buffers():
    a, b = _inputs()
    expected = _scan(a, b).clone()
    errors = []

    def work():
        try:
            for _ in range(10):
                outputs = [_scan(a, b) for _ in range(2)]
                assert not _overlap(*outputs)
                for h in outputs:
                    assert torch.equal(h, expected)
        except AssertionError as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert _cpu.output_cache_bytes()[0] <= 64 * MIB


def test_invalid_cap_errors(monkeypatch):
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        _cpu.set_output_cache(-1)
    monkeypatch.setenv("MEMRNN_SCAN_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="MEMRNN_SCAN_CACHE_BYTES must be a whole number"):
        _cpu._default_cache_bytes()
    monkeypatch.setenv("MEMRNN_SCAN_CACHE_BYTES", "0")
    assert _cpu._default_cache_bytes() == 0


def test_threaded_and_serial_builds_are_cached_apart():
    # numba's disk cache does not key entries by compile options: builds sharing a name would
    # load each other's code (the threaded scan then ran on one thread).
    for threaded, serial in (
        (native_mod._forward_threaded, native_mod._forward_serial),
        (native_mod._backward_threaded, native_mod._backward_serial),
    ):
        assert threaded.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
        assert threaded.py_func.__qualname__ != serial.py_func.__qualname__
        assert threaded.py_func.__code__ is serial.py_func.__code__
