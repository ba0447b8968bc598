"""The check every op's every backend passes: same outputs, final state and gradients as naive."""

from collections.abc import Callable, Sequence

import pytest
import torch

from memrnn.ops import dispatch

# Backends compared with `naive`; each test skips those an op does not have or cannot run here.
BACKENDS = ("torch", "numba", "triton")
LENGTHS = (1, 7, 63)
DTYPES = (torch.float32, torch.float64)
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "triton" else "cpu")


def _outputs_and_gradients(
    run: Callable[..., Sequence[torch.Tensor]], args: Sequence[object]
) -> list[torch.Tensor]:
    """Every output of `run(*args)`, then the gradients of a loss reaching all of them (the
    final state too, as a carried state's gradient does) with respect to every tensor in args
    that requires one."""
    result = run(*args)
    result = [result] if isinstance(result, torch.Tensor) else result
    outputs = [out for out in result if isinstance(out, torch.Tensor)]
    gen = torch.Generator().manual_seed(1)
    loss = sum(
        (out * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)).sum()
        for out in outputs
        if out.requires_grad
    )
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    # An input the outputs do not depend on has no gradient in one backend, zeros in another.
    grads = [torch.zeros_like(a) if g is None else g for g, a in zip(grads, inputs, strict=True)]
    return [o.detach() for o in outputs] + grads


def _assert_agree(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], tol: float):
    """Each tensor of `got` equals its partner in `expected` within `tol` of the partner's
    largest magnitude (at least 1): weight gradients are sums over B T terms."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        scale = e.abs().max().clamp_min(1.0) if e.numel() else 1.0
        torch.testing.assert_close(g.cpu() / scale, e / scale, rtol=tol, atol=tol)


@pytest.fixture
def outputs_and_gradients() -> Callable[..., list[torch.Tensor]]:
    """`run(fn, args)`: every output of `fn(*args)`, then the gradients of one loss reaching
    all of them with respect to every tensor argument that requires one."""
    return _outputs_and_gradients


@pytest.fixture
def assert_agree() -> Callable[..., None]:
    """`check(got, expected, tol)` on two lists from `outputs_and_gradients`."""
    return _assert_agree


@pytest.fixture
def agree() -> Callable[..., None]:
    """`check(fn, reference, args, tol)`: `fn(*args)` and `reference(*args)` give the same
    outputs and gradients (see `outputs_and_gradients`) within `tol`, relative to size."""

    def check(fn, reference, args: Sequence[object], tol: float) -> None:
        got = _outputs_and_gradients(fn, args)
        _assert_agree(got, _outputs_and_gradients(reference, args), tol)

    return check


@pytest.fixture
def compare_to_naive() -> Callable[..., None]:
    """`check(op, name, backend, args, dtype)`: `memrnn.ops.<op>.<backend>.<name>(*args)` and
    the naive one agree on every output and every gradient, within `TOLERANCE[dtype]` of the
    largest magnitude of each reference tensor."""

    def check(op: str, name: str, backend: str, args: Sequence[object], dtype: torch.dtype):
        device = _device(backend)
        reason = dispatch.unavailable_reason(op, backend, device, dtype, name)
        if reason is not None:
            pytest.skip(reason)
        if device.type == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        moved = [
            a.detach().to(device).requires_grad_(a.requires_grad)
            if isinstance(a, torch.Tensor)
            else a
            for a in args
        ]
        got = _outputs_and_gradients(dispatch.implementation(op, backend, name), moved)
        expected = _outputs_and_gradients(dispatch.implementation(op, "naive", name), args)
        _assert_agree(got, expected, TOLERANCE[dtype])

    return check
