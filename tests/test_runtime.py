import subprocess
import sys

import pytest

from memrnn import runtime
from memrnn.ops import _cpu

# Allocates two 48 MiB tensors and frees them, five times over (malloc settles on where it
# places them), then prints the page faults taken by allocating them once more. Under glibc's
# defaults blocks above 32 MiB always come from mmap and go back to the system when freed, so
# every allocation faults its pages in again.
SCRIPT = """
import resource, sys
import torch
from memrnn.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
n = 12 << 20
for _ in range(5):
    xs = [torch.ones(n) for _ in range(2)]
    del xs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
xs = [torch.ones(n) for _ in range(2)]
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_spares_page_faults_on_reallocation() -> None:
    # 96 MiB are 24 576 pages of 4 KiB (fewer with transparent huge pages).
    assert _faults("default") > 1000
    assert _faults("keep") < 200


def test_keep_freed_memory_checks_its_limit() -> None:
    with pytest.raises(ValueError, match="`limit` must be an int >= 1 MiB"):
        runtime.keep_freed_memory(1024)
    with pytest.raises(ValueError, match="`limit`"):
        runtime.keep_freed_memory(True)


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu.sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False
