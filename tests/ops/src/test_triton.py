"""The SRC Triton kernels (sequential, state in registers) against the plain loop of
`src_step` (`src_loop_reference`): outputs, final state and the gradients of u, the initial
state and the bias, with and without the straight-through and detach options. Tiny problems:
without a GPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("straight", "detach"), [(False, False), (True, True)])
def test_src_layer_matches_reference_loop(triton_kernels, straight, detach) -> None:
    from memrnn.ops.src import SRCConstants
    from memrnn.ops.src.naive import src_loop
    from memrnn.ops.src.triton import src_layer

    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, straight, detach)
    gen = torch.Generator().manual_seed(0)
    B, T, N = 2, 13, 5
    u = 2 * torch.randn(B, T, N, generator=gen, dtype=torch.float64)
    state = [0.3 * torch.randn(B, N, generator=gen, dtype=torch.float64) for _ in range(3)]
    bias = torch.full((N,), -1.0, dtype=torch.float64) + 0.1 * torch.randn(N, generator=gen)
    args = [x.requires_grad_() for x in (u, *state, bias)]
    out = src_layer(*(x.to(DEVICE) for x in args), c)
    weights = torch.randn(B, T, N, generator=gen, dtype=torch.float64).to(DEVICE)
    loss = (out[0] * weights).sum() + out[1].sum() + 2 * out[2].sum() + 3 * out[3].sum()
    grads = torch.autograd.grad(loss, args)
    ref = src_loop(*args, c)
    y_ref = ref[0]
    loss_ref = (y_ref * weights.cpu()).sum() + ref[1].sum() + 2 * ref[2].sum() + 3 * ref[3].sum()
    # Detached, the initial h and hs reach the loss through no differentiable path.
    ref_grads = torch.autograd.grad(loss_ref, args, allow_unused=True)
    ref_grads = [
        torch.zeros_like(a) if g is None else g for g, a in zip(ref_grads, args, strict=True)
    ]
    for name, got, want in zip(("y", "i", "h", "hs"), out, ref, strict=True):
        torch.testing.assert_close(got.cpu(), want.detach(), atol=1e-10, rtol=1e-10, msg=name)
    for name, got, want in zip(("u", "i0", "h0", "hs0", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(
            got, want, atol=1e-9, rtol=1e-9, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_src_layer_rejects_bad_shapes() -> None:
    from memrnn.ops.src import SRCConstants
    from memrnn.ops.src.triton import src_layer

    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    u, s = torch.zeros(2, 3, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"`h0` has shape \(2, 5\)"):
        src_layer(u, s, torch.zeros(2, 5), s, torch.zeros(4), c)
    with pytest.raises(ValueError, match="`bias` has 3 elements; expected 4"):
        src_layer(u, s, s, s, torch.zeros(3), c)
    with pytest.raises(ValueError, match=r"`u` must be \(B, T, N\)"):
        src_layer(torch.zeros(3, 4), s, s, s, torch.zeros(4), c)
