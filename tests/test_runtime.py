import json
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


# -- threads -----------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    before = runtime.get_threads()
    yield
    runtime.set_threads(before["torch"])


def test_set_threads_sets_torch_and_numba_together(restore_threads) -> None:
    import torch

    assert runtime.set_threads(1) == 1
    assert runtime.get_threads()["torch"] == torch.get_num_threads() == 1
    if _cpu.NUMBA_AVAILABLE:
        assert runtime.get_threads()["numba"] == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="integer >= 1"):
            runtime.set_threads(bad)


@pytest.mark.skipif(runtime.usable_cores() < 2, reason="needs 2 cores to tell 1 thread from all")
def test_set_threads_survives_numba_starting_its_pool() -> None:
    # Starting numba's OpenMP pool sets the OpenMP thread count that torch shares back to
    # numba's pool size; set_threads starts numba first, so torch keeps the count asked for.
    script = (
        "import torch\nfrom memrnn import runtime\nruntime.set_threads(1)\n"
        "print(torch.get_num_threads(), runtime.get_threads()['numba'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    torch_threads, numba_threads = done.stdout.split()
    assert torch_threads == "1" and numba_threads in ("0", "1")


def test_default_threads_follow_the_environment_then_idle_cores(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.1: 0.2)
    assert runtime.default_threads() == 1  # a busy machine: one thread, never zero
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.1: 5.7)
    assert runtime.default_threads() == 6
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.1: 30.0)
    assert runtime.default_threads() == 8  # never more than the usable cores
    # Where /proc/stat cannot be read: the load average.
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.1: None)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    assert runtime.default_threads() == 2
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert runtime.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.default_threads() == 1  # OMP_NUM_THREADS limits numba as well


def test_idle_cores_measures_this_process_cores() -> None:
    idle = runtime.idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat or affinity here")
    assert 0.0 <= idle <= runtime.usable_cores()


def test_the_command_sizes_threads_and_a_python_call_does_not(monkeypatch, restore_threads):
    from memrnn import cli

    calls = []
    monkeypatch.setattr(cli, "set_threads", calls.append)
    argv = ["stream", "--checkpoint", "no-such-run"]
    assert cli.main(argv) == 2 and calls == []
    monkeypatch.setattr(sys, "argv", ["memrnn", *argv])
    assert cli.main() == 2 and calls == [None]
    assert cli.main([*argv, "--threads", "1"]) == 2 and calls == [None, 1]


def test_threads_benchmark_reports_ratios_to_one_thread(monkeypatch, tmp_path) -> None:
    from benchmarks import threads

    seconds = {"default": 2.0, "one": 2.0, "cores": 6.0}
    monkeypatch.setattr(threads, "_run", lambda out, steps, setting, cores: (seconds[setting], 1.0))
    monkeypatch.setattr(threads, "_start_busy", lambda n: [])
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    threads.main(["--quick", "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "threads_quick.json").read_text())["rows"]
    ratios = {(r["load"], r["setting"]): r["wall_vs_one"] for r in rows}
    assert ratios[("busy", "cores")] == 3.0 and ratios[("idle", "default")] == 1.0
    argv, env = threads._command(tmp_path, 40, "one", 2)
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "1"
    assert "--threads" in threads._command(tmp_path, 40, "cores", 2)[0]
