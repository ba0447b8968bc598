"""numba's on-disk cache of the CPU kernels: every kernel is cached, an edit to the helpers the
kernels inline compiles them anew, a process without a writable cache directory still runs
them, and kernels loaded from the cache compute exactly what freshly compiled ones do."""

import importlib
import os
import subprocess
import sys
import warnings

import pytest

pytest.importorskip("numba")

from numba.core import caching  # noqa: E402
from numba.core.dispatcher import Dispatcher  # noqa: E402

from memrnn.ops import _cpu  # noqa: E402

OPS = ("scan", "mru", "lru", "mingru", "brc", "src")


def _kernels() -> dict[str, Dispatcher]:
    """Every compiled kernel of every op, without the helpers inlined into them."""
    found = {}
    for op in OPS:
        module = importlib.import_module(f"memrnn.ops.{op}.numba")
        for name, value in vars(module).items():
            inline = isinstance(value, Dispatcher) and value.targetoptions.get("inline")
            if isinstance(value, Dispatcher) and inline in (None, "never"):
                found[f"{op}.{name}"] = value
    return found


def _add(x):
    return x + 1.0


def test_every_kernel_is_cached_on_disk():
    kernels = _kernels()
    assert len(kernels) >= 20
    uncached = [name for name, k in kernels.items() if isinstance(k._cache, caching.NullCache)]
    assert not uncached, f"compiled in every process: {uncached}"


def test_builds_are_named_after_the_helpers_they_inline(tmp_path):
    # numba invalidates a cached kernel when its own file changes, not when _cpu.py does.
    threaded, serial = _cpu.compile_pair(_add)
    for build in (threaded, serial):
        assert build.py_func.__name__.endswith("_" + _cpu.HELPERS_DIGEST)
        assert _cpu.HELPERS_DIGEST in os.path.basename(build._cache._cache_file._index_path)
    edited = tmp_path / "_cpu.py"
    edited.write_bytes(open(_cpu.__file__, "rb").read() + b"\n# an edit\n")
    assert _cpu._source_digest(str(edited)) != _cpu.HELPERS_DIGEST
    assert _cpu._source_digest(_cpu.__file__) == _cpu.HELPERS_DIGEST


def test_no_writable_cache_directory_compiles_in_process(monkeypatch):
    # No locator: what numba finds where the package and the user cache are both read-only.
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(caching.config, "CACHE_LOCATOR_CLASSES", None, raising=False)
    monkeypatch.setattr(_cpu, "_warned_uncached", False)
    with pytest.raises(RuntimeError, match="no locator available"):
        _cpu.njit(cache=True)(_add)
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        kernel = _cpu.cached_njit(_add)
    assert isinstance(kernel._cache, caching.NullCache)
    assert kernel(1.0) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(_cpu.cached_njit(nogil=True)(_add)._cache, caching.NullCache)


PROBE = """
import hashlib, torch
from numba.core.dispatcher import Dispatcher
from memrnn.models import create_model
digest = hashlib.sha256()
for dtype in (torch.float32, torch.float64):
    for name in ("bmru-small", "lru-small", "mingru-small", "brc-small"):
        torch.manual_seed(0)
        model = create_model(name, input_size=2, output_size=2, head="sequence", d_model=8)
        model = model.to(dtype)
        y, _ = model(torch.randn(3, 37, 2, dtype=dtype))
        y.sum().backward()
        digest.update(y.detach().numpy().tobytes())
        for p in model.parameters():
            digest.update(p.grad.numpy().tobytes())
import memrnn.ops.mru.numba as a, memrnn.ops.lru.numba as b
import memrnn.ops.mingru.numba as c, memrnn.ops.brc.numba as d
kernels = [v for m in (a, b, c, d) for v in vars(m).values() if isinstance(v, Dispatcher)]
hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
print(digest.hexdigest(), hits, misses)
"""


@pytest.mark.slow
def test_cached_kernels_compute_what_fresh_ones_do(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    fresh, warm = run(), run()
    assert int(fresh[1]) == 0 and int(fresh[2]) > 0
    assert int(warm[1]) == int(fresh[2]) and int(warm[2]) == 0
    assert warm[0] == fresh[0]
    assert any(name.endswith(".nbc") for _, _, files in os.walk(tmp_path) for name in files)
