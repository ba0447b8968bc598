"""The SRC over a sequence as one autograd node, the loop in torch ops (any device or dtype).

The forward pass groups the operations exactly as `memrnn.ops.src.naive.src_step` does; the
backward pass through time is written by hand (the equations are those of the numba kernels,
`memrnn.ops.src.numba`), so autograd records one node per sequence instead of a dozen per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memrnn.ops.scan import linear_scan
from memrnn.ops.src.naive import SRCConstants, work_dtype


class _SRCLoop(torch.autograd.Function):
    """The whole recurrence as one autograd node, with a hand-written backward through time.

    What does not depend on the (h, hs) recurrence runs over the whole sequence at once: the
    drive x + b_h, and in the backward pass the local derivatives and the integrator's reverse
    scan. The forward integrator and the h/hs recurrence loop per step.
    """

    @staticmethod
    def forward(ctx, u, i0, h0, hs0, bias, c: SRCConstants, store: torch.dtype):  # type: ignore[override]
        B, T, N = u.shape
        i_seq = u.new_empty(B, T, N)
        h_seq = u.new_empty(B, T, N)
        hs_seq = u.new_empty(B, T, N)

        # States carried to the next step are rounded to the storage dtype, as in src_step.
        def rnd(t: Tensor) -> Tensor:
            return t if store == t.dtype else t.to(store).to(t.dtype)

        # The integrator runs as the same sequential update as src_step (not as a scan) so
        # that results stay bitwise equal to the step-by-step path.
        i = i0
        for t in range(T):
            i_seq[:, t] = c.alpha_i * i + u[:, t]
            i = rnd(i_seq[:, t])
        xb = c.rho * torch.tanh(i_seq / c.rho) + bias  # (B, T, N)
        h, hs = h0, hs0
        for t in range(T):
            h_seq[:, t] = torch.tanh(xb[:, t] + c.r * h + c.r_s * hs)
            z = c.z_hyp - (c.z_hyp - c.z_dep) * torch.sigmoid(10.0 * (h - 0.5))
            hs = rnd(z * hs + (1.0 - z) * h)
            h = rnd(h_seq[:, t])
            hs_seq[:, t] = hs
        y = torch.relu(h_seq)
        ctx.save_for_backward(i_seq, h_seq, hs_seq, h0, hs0)
        ctx.constants = c
        ctx.bias_shape = bias.shape
        return y, i.clone(), h.clone(), hs.clone()

    @staticmethod
    def backward(ctx, gy, gi, gh, ghs):  # type: ignore[override]
        i_seq, h_seq, hs_seq, h0, hs0 = ctx.saved_tensors
        c: SRCConstants = ctx.constants
        B, T, N = h_seq.shape
        gy = torch.zeros_like(h_seq) if gy is None else gy
        gi = torch.zeros_like(h0) if gi is None else gi
        gh = torch.zeros_like(h0) if gh is None else gh
        ghs = torch.zeros_like(h0) if ghs is None else ghs
        # Local derivatives of every step, over the whole sequence.
        g_out = gy if c.straight_through else gy * (h_seq > 0).to(gy.dtype)
        d_h = 1.0 - h_seq * h_seq
        h_prev = torch.cat([h0.unsqueeze(1), h_seq[:, :-1]], dim=1)
        hs_prev = torch.cat([hs0.unsqueeze(1), hs_seq[:, :-1]], dim=1)
        sig = torch.sigmoid(10.0 * (h_prev - 0.5))
        z = c.z_hyp - (c.z_hyp - c.z_dep) * sig
        # d hs_t / d h_{t-1}, through both the (1 - z) term and the gate z itself.
        k = (1.0 - z) - (c.z_hyp - c.z_dep) * 10.0 * sig * (1.0 - sig) * (hs_prev - h_prev)
        # The (h, hs) recurrence backwards; gp_t = dL/d(pre-activation of h_t).
        gp_seq = torch.empty_like(h_seq)
        for t in range(T - 1, -1, -1):
            gp = (gh + g_out[:, t]) * d_h[:, t]
            gp_seq[:, t] = gp
            if c.detach_recurrence:
                gh, ghs = torch.zeros_like(gh), torch.zeros_like(ghs)
            else:
                gh, ghs = c.r * gp + ghs * k[:, t], c.r_s * gp + ghs * z[:, t]
        # The integrator backwards: g_i_t = gp_t tanh'(i_t / ρ) + α_i g_i_{t+1} (reverse scan).
        th = torch.tanh(i_seq / c.rho)
        b = gp_seq * (1.0 - th * th)
        b[:, -1] += gi
        alpha = h_seq.new_full((1, 1, N), c.alpha_i)
        gu, _ = linear_scan(alpha, b, None, reverse=True, backend="torch")
        gi0 = c.alpha_i * gu[:, 0]
        gbias = gp_seq.sum(dim=(0, 1)).reshape(ctx.bias_shape) if ctx.needs_input_grad[4] else None
        return gu, gi0, gh, ghs, gbias, None, None


def src_loop(
    u: Tensor, i0: Tensor, h0: Tensor, hs0: Tensor, bias: Tensor, c: SRCConstants
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, i_T, h_T, hs_T); see `memrnn.ops.src.src_loop`."""
    dtype, work = u.dtype, work_dtype(u.dtype)
    args = (t.to(work) for t in (u, i0, h0, hs0, bias))
    y, i, h, hs = (t.to(dtype) for t in _SRCLoop.apply(*args, c, dtype))
    return y, i, h, hs


__all__ = ["src_loop"]
