"""The BRC/nBRC recurrence over a sequence as one op (docs/units/brc.md).

With the input terms drive = [U_a x + b_a | U_c x + b_c | U x + b] (B, T, 3H) computed for the
whole sequence beforehand,

    a_t = 1 + tanh(drive_a,t + f_a(h_{t−1})),   c_t = σ(drive_c,t + f_c(h_{t−1}))
    h_t = c_t ⊙ h_{t−1} + (1 − c_t) ⊙ tanh(drive_h,t + a_t ⊙ h_{t−1})

with the memory feedback f = (w_a ⊙ h, w_c ⊙ h) (BRC, weight (2, H)) or (W_a h, W_c h) (nBRC,
`dense`, weight (2H, H)). The recurrence is nonlinear in h, so there is no batched torch path:
backends are `naive` (the loop of torch ops, any device) and `numba` (both passes through time
in compiled kernels, one autograd node; CPU float32/float64).
"""

from __future__ import annotations

from torch import Tensor

from memrnn.ops import dispatch
from memrnn.ops.brc.naive import bistable_cell


def bistable_layer(
    drive: Tensor, h0: Tensor, weight: Tensor, dense: bool, backend: str = "auto"
) -> Tensor:
    """h (B, T, H) of a BRC (`dense` False, weight = [w_a; w_c] (2, H)) or an nBRC (`dense`
    True, weight = [W_a; W_c] (2H, H)) from the input terms drive (B, T, 3H) (columns [0, H)
    for a, [H, 2H) for c, [2H, 3H) for the candidate, biases included) and h0 (B, H);
    differentiable in drive, h0 and weight."""
    H3 = drive.shape[-1]
    expected = (2 * (H3 // 3), H3 // 3) if dense else (2, H3 // 3)
    if H3 % 3 or tuple(weight.shape) != expected:
        raise ValueError(
            f"bistable_layer: `weight` must have shape {expected} for drive of {H3} features, "
            f"got {tuple(weight.shape)}"
        )
    backend = dispatch.resolve("brc", backend, drive.device, drive.dtype)
    run = dispatch.implementation("brc", backend, "bistable_layer")
    return run(drive, h0, weight, dense)


__all__ = ["bistable_cell", "bistable_layer"]
