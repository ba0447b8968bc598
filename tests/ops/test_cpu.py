import pytest

from memrnn.ops import _cpu as jit
from memrnn.ops.mingru import numba as mingru_native
from memrnn.ops.mru import numba as mru_native
from memrnn.ops.src import numba as src_native

pytest.importorskip("numba")


def _loop(x):
    total = 0.0
    for value in x:
        total += value
    return total


def test_builds_have_their_own_names_and_options():
    threaded, serial = jit.compile_pair(_loop, error_model="numpy")
    assert threaded.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
    assert threaded.py_func.__qualname__ != serial.py_func.__qualname__
    assert threaded.py_func.__code__ is serial.py_func.__code__
    assert threaded.targetoptions["error_model"] == "numpy"
    assert threaded([1.0, 2.0]) == serial([1.0, 2.0]) == 3.0


@pytest.mark.parametrize("module", [mru_native, mingru_native, src_native])
def test_unit_kernels_are_compiled_apart(module):
    # numba's disk cache does not key entries by compile options: builds sharing a name would
    # load each other's code (a threaded kernel then runs on one thread, or the reverse).
    for threaded, serial in (
        (module._forward_threaded, module._forward_serial),
        (module._backward_threaded, module._backward_serial),
    ):
        assert threaded.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
        assert threaded.py_func.__qualname__ != serial.py_func.__qualname__
