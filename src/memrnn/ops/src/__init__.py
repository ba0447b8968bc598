"""The spiking recurrent cell (SRC) over a sequence as one op (docs/units/src.md).

Once the integrator input u_t = W_s s_t is known for the whole sequence (one matmul), the
cell is elementwise per (batch, neuron) and sequential only in time:

    i_t  = α_i i_{t−1} + u_t,   x_t = ρ tanh(i_t / ρ)
    h_t  = tanh(((x_t + b_h) + r h_{t−1}) + r_s hs_{t−1})
    z_t  = z_hyp − (z_hyp − z_dep) σ(10 (h_{t−1} − 0.5)),   hs_t = z_t hs_{t−1} + (1 − z_t) h_{t−1}
    y_t  = ReLU(h_t)                                         (analog spikes, 1–3 steps wide)

Backends: `naive` (a loop of `src_step` recorded by autograd), `torch` (one autograd node, the
loop in torch ops, a hand-written backward; any device or dtype), `numba` (both passes in
compiled kernels; CPU float32/float64). float32 cells compute each step in float64 and round
the carried state to float32 in every backend.
"""

from __future__ import annotations

# Not `import torch`: that name is the `torch` backend module of this package once loaded.
import torch as th
from torch import Tensor

from memrnn.ops import dispatch
from memrnn.ops.src.naive import SRCConstants, src_step


def _probe(backend: str, device: th.device, dtype: th.dtype) -> bool:
    """Runs `backend` once on a small spiking problem against the naive loop, forward and
    backward."""
    gen = th.Generator().manual_seed(0)
    c = SRCConstants(0.9, 3.0, 2.0, -7.0, 0.9, 0.0, False, False)
    u = (3.0 * th.rand(2, 40, 3, generator=gen, dtype=dtype)).to(device).requires_grad_()
    bias = th.full((3,), -5.0, dtype=dtype, device=device, requires_grad=True)
    h0 = th.full((2, 3), -0.999, dtype=dtype, device=device)
    state = (th.zeros_like(h0), h0, h0.clone())
    w = th.randn(2, 40, 3, generator=gen, dtype=dtype).to(device)
    results = []
    for name in (backend, "naive"):
        y, i, h, hs = dispatch.implementation("src", name, "src_loop")(u, *state, bias, c)
        loss = (y * w).sum() + h.sum() + hs.sum() + i.sum()
        results.append([y, i, h, hs, *th.autograd.grad(loss, (u, bias))])
    tol = 1e-4 if dtype == th.float32 else 1e-8
    # The probe only judges a backend if the problem spiked (ReLU(h) well above rest).
    return bool(results[1][0].max() > 0.5) and all(
        th.allclose(a, b, atol=tol, rtol=tol) for a, b in zip(*results, strict=True)
    )


def resolve_backend(device: th.device, dtype: th.dtype) -> str:
    """The backend `auto` runs here: the compiled kernel where it exists and agrees with the
    naive loop (probed once per device type and dtype), "torch" otherwise."""
    return dispatch.resolve("src", "auto", device, dtype, probe=_probe)


def src_loop(
    u: Tensor,
    i0: Tensor,
    h0: Tensor,
    hs0: Tensor,
    bias: Tensor,
    constants: SRCConstants,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SRC over integrator inputs u (B, T, N) from the state (i0, h0, hs0), each (B, N),
    with the bias b_h (N,): returns (y (B, T, N), i_T, h_T, hs_T), differentiable in u, the
    state and the bias."""
    if backend == "auto":
        backend = resolve_backend(u.device, u.dtype)
    else:
        backend = dispatch.resolve("src", backend, u.device, u.dtype)
    run = dispatch.implementation("src", backend, "src_loop")
    return run(u, i0, h0, hs0, bias, constants)


__all__ = ["SRCConstants", "resolve_backend", "src_loop", "src_step"]
