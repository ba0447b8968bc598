"""Spiking Recurrent Cell (SRC).

De Geeter, Ernst, Drion, "Spike-based computation using classical recurrent neural networks",
Neuromorphic Computing and Engineering 2024 (https://arxiv.org/abs/2306.03623). A GRU/BRC-like
cell made event-based: a fast positive feedback makes spikes, a slow negative feedback makes
them end and keeps the neuron refractory. Per neuron, per step:

    i_t  = α_i i_{t−1} + W_s s_t,   x_t = ρ tanh(i_t / ρ)
    h_t  = tanh(x_t + r h_{t−1} + r_s hs_{t−1} + b_h)
    z_t  = z_hyp − (z_hyp − z_dep) σ(10 (h_{t−1} − 0.5)),   hs_t = z_t hs_{t−1} + (1 − z_t) h_{t−1}
    y_t  = ReLU(h_t)                                         (analog spikes, 1–3 steps wide)

Implementation notes (ours):

- The recurrence is nonlinear, so it runs step by step, but only the recurrence: `W_s s` is
  computed for the whole sequence in one matmul, and what is left is elementwise per (batch,
  neuron): the op `memrnn.ops.src.src_loop`, whose `backend` picks how that loop runs:
  "numba": compiled kernels for the forward and the backward pass through time, one autograd
  node per sequence; CPU, float32/float64.
  "torch": the same single autograd node with the loop written in torch ops per step, for
  GPUs and other dtypes; its forward groups the operations exactly as `src_step` does.
  "naive": a plain loop of `src_step` recorded by autograd, the ground truth the others are
  tested against.
  "auto" (default) uses "numba" where it runs and agrees with "naive" on a small problem
  (probed once per dtype) and "torch" otherwise.
- float32 cells compute each step in float64 and round the carried state (i, h, hs) and the
  output to float32 (every backend does the same). The fast positive feedback amplifies
  rounding near spike onsets: over 1000 steps a float32-throughout loop drifts ~3e-4 from the
  float64 result, so two float32 implementations that differ only in their tanh rounding
  would disagree by as much; with float64 arithmetic inside they agree to float32 rounding.
- The bias b_h is kept ≤ `bias_max` (−4) by clamping *in the forward pass*, with the gradient
  passed straight through the clamp: b_eff = b_h − ReLU(b_h − bias_max) with the ReLU term
  detached. We chose this over projecting the parameter after each optimiser step because the
  constraint then holds for every optimiser, training loop and loaded checkpoint without any
  cooperation from the caller, and the straight-through gradient cannot get stuck above the
  bound the way a plain `clamp` (zero gradient there) would. The cost: the raw parameter may
  drift above the bound while the effective bias stays at it. `effective_bias_h` is the value
  the cell uses.
- The initial state is the resting equilibrium. At rest i = 0 and hs = h, so h solves
  h = tanh((r + r_s) h + b); with r + r_s < 0 (the paper's 2 − 7) that root is unique and is
  found by bisection on [−1, 1] and Newton steps, in float64, and a warning says when it is
  unstable (tonic firing: the 2×2 Jacobian of (h, hs) there has spectral radius ≥ 1). Otherwise
  the cell is iterated with zero input until it stops moving. The result is cached per bias
  value, device and dtype and carries no gradient. (Iterating until the state stopped moving
  took up to seconds per optimiser step when b_h approached the bifurcation.)
- Options (both off by default): `straight_through` passes the output gradient through the
  ReLU unchanged; `detach_recurrence` detaches h_{t−1} and hs_{t−1} where they enter step t,
  so gradients flow through time only via the input integrator i. On rate-encoded digits,
  networks of 3-4 layers train only with it (experiments/results/src-depth: 0.94 vs 0.25
  test accuracy at depth 3).

Args:
    input_size: D, number of input channels (spikes of the previous layer).
    hidden_size: N, number of neurons.
    alpha_i: input integrator decay α_i (default 0.9).
    rho: drive bound ρ (default 3).
    r: fast positive feedback gain (default 2).
    r_s: slow negative feedback gain (default −7).
    z_hyp: slow gate at hyperpolarisation (default 0.9).
    z_dep: slow gate at depolarisation (default 0).
    bias_init: initial b_h (default −6).
    bias_max: upper bound on the effective b_h (default −4).
    weight_gain: scale of W_s's initialisation relative to nn.Linear's (default 4, ours).
    straight_through: straight-through ReLU gradient (default False).
    detach_recurrence: detach h, hs in the recurrence (default False).
    backend: "auto" (default), "naive", "torch", "numba" or "triton"; how sequences run (see
        above).
    device, dtype: of the parameters.

Shapes:
    x: (B, T, D) -> spikes (B, T, N); state SRCState(i, h, hs), each (B, N).

Example:
    >>> cell = SRC(16, 32)
    >>> spikes, state = cell(torch.rand(4, 50, 16))
    >>> assert spikes.shape == (4, 50, 32) and state.h.shape == (4, 32)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memrnn.ops.src import SRCConstants, src_loop, src_step
from memrnn.units.base import RecurrentUnit, register_unit

# A spike onset is counted when ReLU(h) rises above this level (rest is ReLU(h) = 0 exactly).
SPIKE_THRESHOLD = 0.1


class SRCState(NamedTuple):
    """i: input integrator, h: fast (membrane-like) state, hs: slow state; each (B, N)."""

    i: Tensor
    h: Tensor
    hs: Tensor


def resting_state(
    bias: Tensor,
    c: SRCConstants,
    start: Tensor | None = None,
    max_iter: int = 20000,
    tol: float = 1e-13,
) -> tuple[Tensor, Tensor]:
    """Resting equilibrium (h*, hs*) per neuron for the effective bias (N,), in float64 on CPU.

    With r + r_s < 0, solves h = tanh((r + r_s) h + b) by bisection and Newton steps and warns
    when the equilibrium is unstable (the neuron fires tonically). Otherwise iterates the cell
    with zero input, from h = hs = `start` (default 0), until it stops moving, and warns when it
    does not settle; Newton steps then polish h.
    """
    b = bias.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    a = c.r + c.r_s
    if a < 0:
        # f(h) = h − tanh(a h + b) is increasing, f(−1) < 0 < f(1): one root, bracketed.
        lo, hi = -torch.ones_like(b), torch.ones_like(b)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = mid - torch.tanh(a * mid + b) < 0
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        h = _newton_rest(0.5 * (lo + hi), b, a, steps=3)
        if bool((_rest_spectral_radius(h, c) >= 1.0).any()):
            _warn_tonic()
        return h, h.clone()
    h = torch.zeros_like(b) if start is None else start.to(torch.float64).clone()
    hs = h.clone()
    settled = False
    for n in range(max_iter):
        h_new = torch.tanh(c.r * h + c.r_s * hs + b)
        z = c.z_hyp - (c.z_hyp - c.z_dep) * torch.sigmoid(10.0 * (h - 0.5))
        hs_new = z * hs + (1.0 - z) * h
        # Checking every 8 iterations keeps the host syncs rare.
        if n % 8 == 0:
            delta = torch.maximum((h_new - h).abs(), (hs_new - hs).abs()).max().item()
            if delta < tol:
                settled = True
        h, hs = h_new, hs_new
        if settled:
            break
    if not settled:
        _warn_tonic()
    h = _newton_rest(h, b, a)
    return h, h.clone()


def _newton_rest(h: Tensor, b: Tensor, a: float, steps: int = 50) -> Tensor:
    for _ in range(steps):
        th = torch.tanh(a * h + b)
        h = h - (h - th) / (1.0 - a * (1.0 - th * th))
    return h


def _rest_spectral_radius(h: Tensor, c: SRCConstants) -> Tensor:
    """Spectral radius of d(h_t, hs_t)/d(h_{t−1}, hs_{t−1}) at the rest point hs = h."""
    d = 1.0 - h * h
    z = c.z_hyp - (c.z_hyp - c.z_dep) * torch.sigmoid(10.0 * (h - 0.5))
    # At hs = h the gate's own derivative multiplies hs − h = 0: J = [[r d, r_s d], [1 − z, z]].
    tr = c.r * d + z
    det = c.r * d * z - c.r_s * d * (1.0 - z)
    disc = tr * tr - 4.0 * det
    sq = disc.abs().sqrt()
    real = torch.maximum((tr + sq).abs(), (tr - sq).abs()) / 2.0
    return torch.where(disc >= 0, real, det.clamp(min=0).sqrt())


def _warn_tonic() -> None:
    warnings.warn(
        "SRC: the cell does not settle at rest with this bias (tonic firing); using the "
        "unstable equilibrium as the initial state",
        RuntimeWarning,
        stacklevel=4,
    )


@register_unit("src")
class SRC(RecurrentUnit):
    __doc__ = __doc__

    modes = ("recurrent",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        alpha_i: float = 0.9,
        rho: float = 3.0,
        r: float = 2.0,
        r_s: float = -7.0,
        z_hyp: float = 0.9,
        z_dep: float = 0.0,
        bias_init: float = -6.0,
        bias_max: float = -4.0,
        weight_gain: float = 4.0,
        straight_through: bool = False,
        detach_recurrence: bool = False,
        backend: str = "auto",
        mode: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, hidden_size, mode, backend)
        if not 0.0 <= alpha_i < 1.0:
            raise ValueError(f"SRC: `alpha_i` must be in [0, 1), got {alpha_i!r}")
        if rho <= 0:
            raise ValueError(f"SRC: `rho` must be > 0, got {rho!r}")
        if bias_init > bias_max:
            raise ValueError(f"SRC: `bias_init` ({bias_init}) must be <= `bias_max` ({bias_max})")
        self.constants = SRCConstants(
            float(alpha_i),
            float(rho),
            float(r),
            float(r_s),
            float(z_hyp),
            float(z_dep),
            bool(straight_through),
            bool(detach_recurrence),
        )
        self.bias_init = float(bias_init)
        self.bias_max = float(bias_max)
        self.weight_gain = float(weight_gain)
        factory = {"device": device, "dtype": dtype}
        self.weight_s = nn.Parameter(torch.empty(hidden_size, input_size, **factory))  # (N, D)
        self.bias_h = nn.Parameter(torch.empty(hidden_size, **factory))  # (N,)
        self._rest_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._rest_bias: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init for W_s, U(±1/√D), scaled by weight_gain (ours). At gain 1,
        # rate-coded digits (p = 0.25 × intensity) give an integrated drive of std ~0.7, well
        # below the ~1.5 needed to spike from b_h = -6: 97% of a second layer stayed silent at
        # init, and a silent neuron gets no gradient through the ReLU. At gain 4 none was.
        # b_h = -6: silent rest (paper).
        nn.init.kaiming_uniform_(self.weight_s, a=math.sqrt(5))
        with torch.no_grad():
            self.weight_s.mul_(self.weight_gain)
            self.bias_h.fill_(self.bias_init)
        self._rest_cache.clear()
        self._rest_bias = None

    @property
    def effective_bias_h(self) -> Tensor:
        """b_h clamped to ≤ bias_max, with the gradient passed straight through the clamp."""
        b = self.bias_h
        return b - torch.relu(b - self.bias_max).detach()

    def _resting(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        b = self.bias_h.detach().clamp(max=self.bias_max)
        b_cpu = b.cpu()
        if self._rest_bias is None or not torch.equal(self._rest_bias, b_cpu):
            base = self._rest_cache.get((torch.device("cpu"), torch.float64))
            # Warm start from the previous equilibrium: after an optimiser step b_h moved little.
            start = None if base is None or base[0].shape != b_cpu.shape else base[0]
            self._rest_cache.clear()
            self._rest_bias = b_cpu.clone()
            self._rest_cache[(torch.device("cpu"), torch.float64)] = resting_state(
                b, self.constants, start=start
            )
        key = (torch.device(device), dtype)
        if key not in self._rest_cache:
            h, hs = self._rest_cache[(torch.device("cpu"), torch.float64)]
            self._rest_cache[key] = (
                h.to(device=device, dtype=dtype),
                hs.to(device=device, dtype=dtype),
            )
        return self._rest_cache[key]

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SRCState:
        device = torch.device(device) if device is not None else self._param_device()
        dtype = dtype if dtype is not None else self._param_dtype()
        N = self.hidden_size
        if device.type == "meta":
            empty = torch.empty(batch_size, N, device=device, dtype=dtype)
            return SRCState(empty, empty, empty)
        h, hs = self._resting(device, dtype)
        i = torch.zeros(batch_size, N, device=device, dtype=dtype)
        return SRCState(i, h.expand(batch_size, N).clone(), hs.expand(batch_size, N).clone())

    def _step(self, x_t: Tensor, state: SRCState) -> tuple[Tensor, SRCState]:
        u_t = F.linear(x_t, self.weight_s)  # (B, N)
        y, i, h, hs = src_step(u_t, *state, self.effective_bias_h, self.constants)
        return y, SRCState(i, h, hs)

    def _forward_recurrent(self, x: Tensor, state: SRCState) -> tuple[Tensor, SRCState]:
        u = F.linear(x, self.weight_s)  # (B, T, N)
        y, i, h, hs = src_loop(
            u.contiguous(), *state, self.effective_bias_h, self.constants, self.backend
        )
        return y, SRCState(i, h, hs)

    def extra_repr(self) -> str:
        c = self.constants
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, alpha_i={c.alpha_i}, "
            f"rho={c.rho}, r={c.r}, r_s={c.r_s}, z_hyp={c.z_hyp}, z_dep={c.z_dep}, "
            f"bias_max={self.bias_max}, straight_through={c.straight_through}, "
            f"detach_recurrence={c.detach_recurrence}, backend={self.backend!r}"
        )


def _onsets(spikes: Tensor, threshold: float) -> Tensor:
    above = spikes > threshold  # (B, T, N)
    before = torch.zeros_like(above[:, :1])
    return above & ~torch.cat([before, above[:, :-1]], dim=1)


def spike_stats(
    spikes: Tensor | Sequence[Tensor], threshold: float = SPIKE_THRESHOLD
) -> dict[str, float]:
    """Spike counts for logging, per layer.

    A *spike* is an onset: a step where ReLU(h) rises above `threshold` having been at or below
    it on the previous step (or the sequence starts above it). Each analog bump of 1–3 steps
    thus counts once. For each layer k (spikes (B, T, N)) the dict holds
        "layer{k}/firing_rate":     spikes per neuron per step,
        "layer{k}/silent_fraction": fraction of neurons with no spike in any sample of the batch,
        "layer{k}/spikes_per_sample": spikes per sample, summed over the layer's neurons,
    and "spikes_per_sample" summed over layers.
    """
    layers = [spikes] if isinstance(spikes, Tensor) else list(spikes)
    out: dict[str, float] = {}
    total = 0.0
    for k, s in enumerate(layers):
        if s.dim() != 3:
            raise ValueError(f"spike_stats: spikes must be (B, T, N); got {tuple(s.shape)}")
        onsets = _onsets(s.detach(), threshold)
        B, T, N = s.shape
        count = onsets.sum().item()
        out[f"layer{k}/firing_rate"] = count / (B * T * N)
        out[f"layer{k}/silent_fraction"] = (~onsets.any(dim=1).any(dim=0)).float().mean().item()
        out[f"layer{k}/spikes_per_sample"] = count / B
        total += count / B
    out["spikes_per_sample"] = total
    return out


__all__ = [
    "SPIKE_THRESHOLD",
    "SRC",
    "SRCConstants",
    "SRCState",
    "resting_state",
    "spike_stats",
]
