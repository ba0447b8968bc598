"""Memory recurrent units: BMRU, the epsilon-family and CMRU.

De Geeter, Lambrechts, Ernst, Drion, "Parallelizable memory recurrent units",
arXiv 2601.09495 (2026), https://arxiv.org/abs/2601.09495; the form implemented and the
epsilon-family follow Brandoit, Fyon, Ernst, Drion, arXiv 2605.11855 (ICML 2026),
https://arxiv.org/abs/2605.11855.

A BMRU neuron is a hysteretic comparator: it writes sign(c_t) when |c_t| reaches the threshold
beta_t and holds its state otherwise, so every step is an affine map of the previous state and
the sequence runs as one linear scan:

    z_t = H(|c_t| - beta_t),  s_t = sign(c_t),  h_t = z_t (s_t + eps h_{t-1}) + (1 - z_t) h_{t-1}
    c_t = W_c x_t + b_c,   beta_t = |W_beta x_t + b_beta| (or a learned |beta|)
    y_t = W_o (alpha h_t) + b_o

eps = 0 is the BMRU (states in {-1, +1}); eps = 1 is the CMRU (h_t = h_{t-1} + z_t s_t, states on
the integer lattice, dh_t/dh_{t-1} = 1). H and sign are exact in the forward pass and use a
surrogate derivative backward (`memrnn.ops.surrogate`). The recurrence is the op
`memrnn.ops.mru` (docs/units/mru.md).

Why BMRU is the limit of an internal clock: the map g(h; c) = tanh(a h + c), a > 1, has two
stable equilibria for |c| < beta(a) = a h_f - atanh(h_f), h_f = sqrt(1 - 1/a) (where g is tangent
to the diagonal), and one outside. Iterating g from h_{t-1} converges to the equilibrium in the
basin of h_{t-1} inside the band and to the only one, of sign sign(c), outside: the BMRU update
with threshold beta(a) (checked in tests/units/test_mru.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.ops.mru import mru_gates, mru_layer, mru_scan
from memrnn.ops.surrogate import SurrogateFn, get_surrogate, sign
from memrnn.units.base import (
    Projection,
    RecurrentUnit,
    autocast_linear,
    check_choice,
    mark_no_weight_decay,
    projections_follow_autocast,
    register_unit,
)

THRESHOLDS = ("input", "constant")


class BMRUState(NamedTuple):
    h: Tensor  # (B, N) memory state: +-1 for the BMRU, integers for the CMRU


def bmru_scan(
    c: Tensor,
    beta: Tensor,
    h0: Tensor,
    epsilon: float = 0.0,
    surrogate: str | SurrogateFn = "atan",
    sharpness: float = 1.0,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The parameter-free MRU recurrence; returns (h, h_T).

    Args:
        c: candidates (B, T, N).
        beta: thresholds, broadcastable to c (already non-negative).
        h0: initial state (B, N).
        epsilon: 0 for the BMRU, 1 for the CMRU, in between for the epsilon-family.
        surrogate, sharpness: the surrogate derivative of H and sign (`memrnn.ops.surrogate`).
        backend: the backend of the `memrnn.ops.mru` op.
    """
    h, _ = mru_scan(c, beta, h0, epsilon, surrogate, sharpness, backend=backend)
    return h, h[:, -1]


@register_unit("bmru")
class BMRU(RecurrentUnit):
    """Bistable memory recurrent unit (and the epsilon-family through `epsilon`).

    Args:
        input_size: D, features of x.
        hidden_size: N, memory neurons.
        output_size: features of y (default: hidden_size).
        threshold: "input" (beta_t = |W_beta x_t + b_beta|, default) or "constant" (a learned
            per-neuron |beta|).
        epsilon: 0.0 (BMRU). Settable at any time, e.g. by the training schedules
            (`memrnn.train.schedules`).
        surrogate: "atan" (default), "fast-sigmoid", "triangle", "straight-through" or a callable.
        sharpness: k of the surrogate (default 1.0).
        mode: "parallel" (one linear scan, default) or "recurrent" (step by step).
        backend: the backend of the parallel mode's op, `memrnn.ops.mru` (default "auto":
            compiled CPU kernels where they run, else torch ops).

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size); state: BMRUState(h=(B, N)).

    Example:
        >>> unit = BMRU(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        threshold: str = "input",
        epsilon: float = 0.0,
        surrogate: str | SurrogateFn = "atan",
        sharpness: float = 1.0,
        mode: str | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        owner = type(self).__name__
        self.threshold = check_choice("threshold", threshold, THRESHOLDS, owner)
        self.sharpness = sharpness
        # Checks the surrogate's name now rather than at the first forward.
        get_surrogate(surrogate, sharpness)
        self.surrogate = surrogate
        self.epsilon = epsilon
        factory = {"device": device, "dtype": dtype}
        self.candidate = Projection(input_size, hidden_size, **factory)
        if threshold == "input":
            self.threshold_proj = Projection(input_size, hidden_size, **factory)
        else:
            self.beta = nn.Parameter(torch.empty(hidden_size, **factory))
            mark_no_weight_decay(self.beta)
        self.alpha = nn.Parameter(torch.empty(hidden_size, **factory))
        self.h0 = nn.Parameter(torch.empty(hidden_size, **factory))
        self.out = Projection(hidden_size, self.output_size, **factory)
        mark_no_weight_decay(self.alpha, self.h0)
        # The write rate of the last forward/step (mean of z), for `write_rate_penalty`.
        self.last_write_rate: Tensor | None = None
        self.reset_parameters()

    # -- initialisation -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        self.candidate.reset_parameters()
        self.out.reset_parameters()
        self._init_threshold()
        self._init_amplitude_and_initial_sign()

    @torch.no_grad()
    def _init_threshold(self) -> None:
        # b_beta = 1 (follow-up lab code): a unit with small inputs starts inside the bistable band.
        if self.threshold == "input":
            self.threshold_proj.reset_parameters()
            self.threshold_proj.bias.fill_(1.0)
        else:
            self.beta.fill_(1.0)

    @torch.no_grad()
    def _init_amplitude_and_initial_sign(self) -> None:
        # alpha = 1 and a random initial sign h0 in {-1, +1} (docs/units/mru.md).
        self.alpha.fill_(1.0)
        self.h0.copy_(torch.randint(0, 2, self.h0.shape, device=self.h0.device) * 2.0 - 1.0)

    # -- epsilon ------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: float) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{type(self).__name__}: `epsilon` must be a number in [0, 1], got {value!r}"
            )
        self._epsilon = float(value)

    # -- surrogate ----------------------------------------------------------------------------
    @property
    def sharpness(self) -> float:
        """k of the surrogate derivative; read by the parallel and the step paths alike, so
        annealing it after construction changes both."""
        return self._sharpness

    @sharpness.setter
    def sharpness(self, value: float) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{type(self).__name__}: `sharpness` must be a positive finite number, "
                f"got {value!r}"
            )
        self._sharpness = float(value)

    @property
    def _derivative(self) -> SurrogateFn:
        return get_surrogate(self.surrogate, self._sharpness)

    # -- pieces -------------------------------------------------------------------------------
    def thresholds(self, x: Tensor) -> Tensor:
        """beta >= 0 for inputs x (..., D): (..., N), or (N,) for a constant threshold."""
        if self.threshold == "input":
            return self.threshold_proj(x).abs()
        return self.beta.abs()

    def threshold_margin(self, x: Tensor) -> Tensor:
        """min | |c| - beta | over x (..., D): how far the inputs are from flipping a write gate."""
        with torch.no_grad():
            return ((self.candidate(x).abs() - self.thresholds(x)).abs()).min()

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> BMRUState:
        device = self.h0.device if device is None else torch.device(device)
        dtype = self.h0.dtype if dtype is None else dtype
        if device.type == "meta":
            return BMRUState(torch.empty(batch_size, self.hidden_size, device=device, dtype=dtype))
        # The sign of the stored real parameter, with a surrogate so that h0 is learned.
        h0 = sign(self.h0, self._derivative).to(device=device, dtype=dtype)
        return BMRUState(h0.expand(batch_size, self.hidden_size))

    def _readout_weight(self) -> Tensor:
        # W_o (alpha h) with alpha folded into the (N_out, N) weight: the same map without a
        # (B, T, N) product and its two backward passes (about 3 ms at B = 16, T = 1024, N = 128).
        return self.out.weight * self.alpha

    def _readout(self, h: Tensor) -> Tensor:
        return autocast_linear(h, self._readout_weight(), self.out.bias)

    def _forward_parallel(self, x: Tensor, state: BMRUState) -> tuple[Tensor, BMRUState]:
        h0 = state.h.to(x.dtype).contiguous()
        # Under autocast the GEMMs run apart from the op, in the autocast dtype.
        if self.threshold == "input" and not projections_follow_autocast(x):
            # Projections, recurrence and readout as one op (on CPU: chunks of rows in cache).
            y, h_last, self.last_write_rate = mru_layer(
                x,
                torch.cat([self.candidate.weight, self.threshold_proj.weight]),
                torch.cat([self.candidate.bias, self.threshold_proj.bias]),
                h0,
                self._readout_weight(),
                self.out.bias,
                self._epsilon,
                self.surrogate,
                self.sharpness,
                backend=self.backend,
            )
            return y, BMRUState(h_last)
        h, self.last_write_rate = mru_scan(
            self.candidate(x),  # (B, T, N)
            # (B, T, N) or (N,), before its absolute value
            self.threshold_proj(x) if self.threshold == "input" else self.beta,
            h0,
            self._epsilon,
            self.surrogate,
            self.sharpness,
            beta_abs=True,
            backend=self.backend,
        )
        return self._readout(h), BMRUState(h[:, -1])

    def _cell(self, x_t: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One update; returns (h_t, z_t). The scan's a h + b form, so gradients match."""
        c = self.candidate(x_t)  # (B, N)
        a, b, z = mru_gates(c, self.thresholds(x_t), self._epsilon, self._derivative)
        return a * h_prev + b, z

    def _step(self, x_t: Tensor, state: BMRUState) -> tuple[Tensor, BMRUState]:
        h, z = self._cell(x_t, state.h)
        self.last_write_rate = z.mean()
        return self._readout(h), BMRUState(h)

    def _forward_recurrent(self, x: Tensor, state: BMRUState) -> tuple[Tensor, BMRUState]:
        h = state.h
        hs, rates = [], []
        for x_t in x.unbind(1):
            h, z = self._cell(x_t, h)
            hs.append(h)
            rates.append(z.mean())
        self.last_write_rate = torch.stack(rates).mean()
        return self._readout(torch.stack(hs, dim=1)), BMRUState(h)

    def _forward_lengths(
        self, x: Tensor, state: BMRUState, lengths: Tensor
    ) -> tuple[Tensor, BMRUState]:
        # Past a sequence's length the write gate is shut (z_t = 0, a_t = 1, b_t = 0), so its
        # state stays at the last valid step: the candidate is set to 0 and the threshold to
        # +inf there, through torch.where, so no gradient reaches the padded inputs either.
        T = x.shape[1]
        valid = (torch.arange(T, device=x.device) < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        c = torch.where(valid, self.candidate(x), 0.0)  # (B, T, N)
        beta = self.threshold_proj(x) if self.threshold == "input" else self.beta.expand_as(c)
        beta = torch.where(valid, beta, torch.inf)  # (B, T, N), before its absolute value
        if self.mode == "parallel":
            h, self.last_write_rate = mru_scan(
                c,
                beta,
                state.h.to(x.dtype).contiguous(),
                self._epsilon,
                self.surrogate,
                self.sharpness,
                beta_abs=True,
                backend=self.backend,
            )
        else:
            h_t, hs, rates = state.h, [], []
            for c_t, beta_t in zip(c.unbind(1), beta.unbind(1), strict=True):
                a, b, z = mru_gates(c_t, beta_t.abs(), self._epsilon, self._derivative)
                h_t = a * h_t + b
                hs.append(h_t)
                rates.append(z.mean())
            h, self.last_write_rate = torch.stack(hs, dim=1), torch.stack(rates).mean()
        return self._readout(h), BMRUState(h[:, -1])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, threshold={self.threshold!r}, epsilon={self._epsilon}, "
            f"surrogate={self.surrogate!r}, sharpness={self.sharpness}"
        )


@register_unit("cmru")
class CMRU(BMRU):
    """Cumulative memory recurrent unit: the BMRU with epsilon = 1 (h_t = h_{t-1} + z_t s_t).

    Same arguments as `BMRU`, with `epsilon=1.0` by default. Annealing epsilon to 0 during
    training (`memrnn.train.schedules`) turns it into a BMRU without rebuilding the module.

    Example:
        >>> unit = CMRU(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> assert y.shape == (2, 5, 8) and unit.epsilon == 1.0
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        threshold: str = "input",
        epsilon: float = 1.0,
        surrogate: str | SurrogateFn = "atan",
        sharpness: float = 1.0,
        mode: str | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            output_size,
            threshold,
            epsilon,
            surrogate,
            sharpness,
            mode,
            backend,
            device,
            dtype,
        )


def epsilon_units(model: nn.Module) -> list[BMRU]:
    """Every MRU of the epsilon-family inside `model` (itself included)."""
    return [m for m in model.modules() if isinstance(m, BMRU)]


def write_rate_penalty(model: nn.Module, lam: float) -> Tensor:
    """lam * sum over epsilon-units of (mean z of their last forward)^2, to add to the loss."""
    rates = [u.last_write_rate for u in epsilon_units(model) if u.last_write_rate is not None]
    if not rates:
        param = next(model.parameters(), None)
        return torch.zeros((), device=None if param is None else param.device)
    return lam * torch.stack([r.float() ** 2 for r in rates]).sum()


def bistable_threshold(a: float) -> float:
    """beta(a) = a h_f - atanh(h_f), h_f = sqrt(1 - 1/a): the bistable band of tanh(a h + c)."""
    if a <= 1.0:
        raise ValueError(
            f"bistable_threshold: the map tanh(a h + c) is bistable only for a > 1, got {a}"
        )
    h_f = math.sqrt(1.0 - 1.0 / a)
    return a * h_f - math.atanh(h_f)


__all__ = [
    "BMRU",
    "CMRU",
    "THRESHOLDS",
    "BMRUState",
    "bistable_threshold",
    "bmru_scan",
    "epsilon_units",
    "write_rate_penalty",
]
