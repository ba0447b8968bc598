"""Test-wide settings.

Triton kernels (memrnn.ops.*.triton) run through Triton's interpreter on machines without a
CUDA device: the interpreter is chosen when a kernel is defined (at import of
`memrnn.ops._triton`), so TRITON_INTERPRET is set here, before any test imports one, and only
where no CUDA device exists (where compiled kernels could not run anyway).
"""

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def triton_reference() -> SimpleNamespace:
    """The CPU ground truth of each op: its naive loop (`memrnn.ops.<op>.naive`)."""
    from memrnn.ops.lru.naive import lru_layer
    from memrnn.ops.mingru.naive import mingru_layer
    from memrnn.ops.mru.naive import mru_layer
    from memrnn.ops.scan.naive import scan

    return SimpleNamespace(
        scan=scan, mru_layer=mru_layer, mingru_layer=mingru_layer, lru_layer=lru_layer
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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: threads only add contention on tiny tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """Command-line flags that make a `memrnn train` run take a second: short sequences,
    batches of 4, width 8, no progress bar, no TensorBoard."""
    return [
        "--seq-len", "10", "--batch-size", "4", "--eval-samples", "8", "--log-every", "1",
        "--model.d_model", "8", "--no-progress", "--tensorboard", "false",
    ]  # fmt: skip


def _tree_hashes(folder: Path) -> dict[str, str]:
    """Every file and link under `folder` (links by their target, not followed)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "link:" + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def tree_hashes():
    """`tree_hashes(folder)`: a digest of every file and link under a folder, to show that a
    command left it unchanged."""
    return _tree_hashes
