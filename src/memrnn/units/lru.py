"""Linear Recurrent Unit: a complex diagonal linear recurrence, stable by parametrisation.

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting recurrent neural networks
for long sequences" (ICML 2023), https://arxiv.org/abs/2303.06349 (docs/units/lru.md):

    x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t),   y_t = Re(C x_t) + D ⊙ u_t,   x ∈ ℂ^N, u, y ∈ ℝ^H
    λ = exp(−exp(ν) + i·exp(θ)),       γ = √(1 − |λ|²) (normalisation, stored as log γ)

The parallel mode is the op `memrnn.ops.lru.lru_layer`: it keeps the complex numbers as real
pairs, so that B u and Re(C h) are one real GEMM each; on CPU the recurrence with the constant
λ is one compiled kernel per pass, elsewhere one `linear_scan` with a of shape (1, 1, N)
broadcast over batch and time.

Precision (ours): the decay rate exp(ν) is floored at the machine epsilon of the recurrence
dtype so that |λ| < 1 also holds after rounding (otherwise a very negative ν gives |λ| == 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.ops.lru import lru_layer
from memrnn.units.base import (
    RecurrentUnit,
    check_positive_int,
    mark_no_weight_decay,
    register_unit,
)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class LRUState(NamedTuple):
    h: Tensor  # (B, N) complex diagonal state (the paper's x_t)


def _check_radii(r_min: float, r_max: float, max_phase: float) -> None:
    for name, value in (("r_min", r_min), ("r_max", r_max)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"LRU: `{name}` must lie in the open interval (0, 1), got {value!r}")
    if r_min >= r_max:
        raise ValueError(
            f"LRU: `r_min` must be smaller than `r_max`, got r_min={r_min!r} >= r_max={r_max!r}"
        )
    if not max_phase > 0.0:
        raise ValueError(f"LRU: `max_phase` must be positive, got {max_phase!r}")


@register_unit("lru")
class LRU(RecurrentUnit):
    """Linear Recurrent Unit ("Resurrecting recurrent neural networks for long sequences",
    https://arxiv.org/abs/2303.06349).

        x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t),   y_t = Re(C x_t) + D ⊙ u_t,   λ = exp(−e^ν + i e^θ)

    The skip term D ⊙ u needs u and y of the same width H = hidden_size. When input_size ≠
    hidden_size an input linear projection (no bias) maps x to u = W_in x; otherwise u = x.
    When `output_size` is given, an output linear projection H -> output_size follows.

    The recurrence parameters ν, θ, log γ are excluded from weight decay and stay in at
    least float32: float32 for float32/float16/bfloat16 modules (also after `.half()` or
    `.to(torch.bfloat16)`), float64 for float64 modules. The state and the scan then run in
    the matching complex dtype (complex64 or complex128).

    Args:
        input_size: features D of the input x.
        hidden_size: width H of u and of the unit's output y.
        output_size: features of the returned y; None (default) returns the H features.
        state_size: number N of complex state channels; None (default) uses hidden_size.
        r_min: smallest |λ| of the ring initialisation (default 0.9).
        r_max: largest |λ| of the ring initialisation (default 0.999).
        max_phase: largest arg(λ) of the ring initialisation (default 2π).
        mode: "parallel" (default; one linear scan) or "recurrent" (step loop, same math).
        backend: the backend of the parallel mode's op, `memrnn.ops.lru` (default "auto").
        device, dtype: of the parameters (see the precision note above).

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size or H); state: LRUState(h: complex (B, N)).

    Example:
        >>> unit = LRU(3, 8, state_size=16)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 16) and state.h.is_complex()
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        state_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        mode: str = "parallel",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        _check_radii(r_min, r_max, max_phase)
        if state_size is not None:
            check_positive_int("state_size", state_size, "LRU")
        self.state_size = hidden_size if state_size is None else state_size
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        factory = {"device": device, "dtype": dtype}
        dtype = torch.get_default_dtype() if dtype is None else dtype
        recurrence = {"device": device, "dtype": torch.promote_types(dtype, torch.float32)}
        H, N = hidden_size, self.state_size

        self.in_proj = nn.Linear(input_size, H, bias=False, **factory) if input_size != H else None
        self.nu = nn.Parameter(torch.empty(N, **recurrence))
        self.theta = nn.Parameter(torch.empty(N, **recurrence))
        self.gamma_log = nn.Parameter(torch.empty(N, **recurrence))
        self.B_re = nn.Parameter(torch.empty(N, H, **factory))
        self.B_im = nn.Parameter(torch.empty(N, H, **factory))
        self.C_re = nn.Parameter(torch.empty(H, N, **factory))
        self.C_im = nn.Parameter(torch.empty(H, N, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.out_proj = nn.Linear(H, output_size, **factory) if output_size is not None else None
        mark_no_weight_decay(self.nu, self.theta, self.gamma_log)
        self.reset_parameters()

    # -- initialisation -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        self._ring_init()
        self._gamma_init()
        self._io_init()

    @torch.no_grad()
    def _ring_init(self) -> None:
        """λ uniform on the ring r_min ≤ |λ| ≤ r_max, 0 ≤ arg λ ≤ max_phase (paper, Lemma 3.2):
        ν = log(−½ log(u1 (r_max² − r_min²) + r_min²)),  θ = log(max_phase · u2),
        u1, u2 ~ U[0, 1]."""
        u1 = torch.rand_like(self.nu)
        u2 = torch.rand_like(self.theta)
        radius_sq = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2
        self.nu.copy_(torch.log(-0.5 * torch.log(radius_sq)))
        # u2 = 0 would give θ = −inf; a tiny floor keeps the phase log finite.
        self.theta.copy_(torch.log(self.max_phase * u2.clamp_min(torch.finfo(u2.dtype).tiny)))

    @torch.no_grad()
    def _gamma_init(self) -> None:
        """γ = √(1 − |λ|²) (paper, section 3.3), so that the state keeps unit variance for white
        input: log γ = ½ log(1 − exp(−2 exp(ν)))."""
        decay = self._decay_rate()
        self.gamma_log.copy_(0.5 * torch.log(-torch.expm1(-2 * decay)))

    @torch.no_grad()
    def _io_init(self) -> None:
        """B: real and imaginary parts N(0, 1/(2H)); C: N(0, 1/N); D: N(0, 1) (paper, app. A)."""
        H, N = self.hidden_size, self.state_size
        nn.init.normal_(self.B_re, std=1 / math.sqrt(2 * H))
        nn.init.normal_(self.B_im, std=1 / math.sqrt(2 * H))
        nn.init.normal_(self.C_re, std=1 / math.sqrt(N))
        nn.init.normal_(self.C_im, std=1 / math.sqrt(N))
        nn.init.normal_(self.D)

    # -- recurrence -------------------------------------------------------------------------
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> LRU:
        # Casting the module to float16/bfloat16 keeps the recurrence parameters in float32,
        # restored from their values before the cast so that no precision is lost.
        before = {name: getattr(self, name).data for name in ("nu", "theta", "gamma_log")}
        super()._apply(fn, recurse)
        for name, old in before.items():
            param = getattr(self, name)
            if param.dtype in _LOW_PRECISION:
                param.data = old.to(device=param.device, dtype=torch.float32)
        return self

    def _decay_rate(self) -> Tensor:
        """exp(ν) = −log|λ|, floored at epsilon so that |λ| < 1 survives rounding (ours)."""
        return torch.exp(self.nu).clamp_min(torch.finfo(self.nu.dtype).eps)

    def eigenvalues(self) -> Tensor:
        """λ = exp(−exp(ν) + i exp(θ)), complex (N,)."""
        return torch.exp(torch.complex(-self._decay_rate(), torch.exp(self.theta)))

    def _complex_dtype(self) -> torch.dtype:
        return torch.complex128 if self.nu.dtype == torch.float64 else torch.complex64

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LRUState:
        device = self._param_device() if device is None else device
        if dtype is None or not dtype.is_complex:
            # A real dtype (e.g. the input's) names the precision; the state is complex.
            dtype = torch.complex128 if dtype == torch.float64 else self._complex_dtype()
        return LRUState(torch.zeros(batch_size, self.state_size, device=device, dtype=dtype))

    def _input(self, x: Tensor) -> Tensor:
        return x if self.in_proj is None else self.in_proj(x)

    def _drive(self, u: Tensor) -> Tensor:
        """γ ⊙ (B u) for u (..., H), complex (..., N) in the recurrence dtype."""
        real = self.nu.dtype
        u = u.to(real)
        bu = torch.complex(u @ self.B_re.to(real).T, u @ self.B_im.to(real).T)
        return torch.exp(self.gamma_log) * bu

    def _readout(self, h: Tensor, u: Tensor, out_dtype: torch.dtype) -> Tensor:
        """Re(C h) + D ⊙ u, then the optional output projection, for h complex (..., N)."""
        real = self.nu.dtype
        y = h.real @ self.C_re.to(real).T - h.imag @ self.C_im.to(real).T
        y = (y + self.D.to(real) * u.to(real)).to(out_dtype)
        return y if self.out_proj is None else self.out_proj(y)

    def _forward_parallel(self, x: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        # Complex numbers as [real | imaginary] halves of a real axis (`memrnn.ops.lru`), so
        # that B u and Re(C h) are one real GEMM each and the recurrence one fused kernel.
        u = self._input(x)  # (B, T, H)
        real, N = self.nu.dtype, self.state_size
        h0 = state.h.to(self._complex_dtype())
        y, h_last = lru_layer(
            u.to(real),
            torch.cat([self.B_re, self.B_im]).to(real),  # (2N, H)
            torch.view_as_real(self.eigenvalues()).T,  # (2, N)
            torch.exp(self.gamma_log),
            torch.cat([h0.real, h0.imag], dim=-1),  # (B, 2N)
            torch.cat([self.C_re, -self.C_im], dim=1).to(real),  # (H, 2N)
            self.D.to(real),
            self.backend,
        )  # (B, T, H), (B, 2N)
        y = y.to(u.dtype)
        y = y if self.out_proj is None else self.out_proj(y)
        return y, LRUState(torch.complex(h_last[:, :N], h_last[:, N:]))

    def _step(self, x_t: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        u = self._input(x_t)  # (B, H)
        drive = self._drive(u)  # (B, N)
        h = self.eigenvalues() * state.h.to(drive.dtype) + drive
        return self._readout(h, u, u.dtype), LRUState(h)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, state_size={self.state_size}, r_min={self.r_min}, "
            f"r_max={self.r_max}, max_phase={self.max_phase:.4g}"
        )


__all__ = ["LRU", "LRUState"]
