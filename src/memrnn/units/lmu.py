"""Legendre Memory Units: the Legendre delay memory, the parallel LMU and the original LMU cell.

Papers: Voelker, Kajić, Eliasmith, "Legendre Memory Units: Continuous-Time Representation in
Recurrent Neural Networks", NeurIPS 2019 (https://papers.nips.cc/paper/9689); Chilkuri,
Eliasmith, "Parallelizing Legendre Memory Unit Training", ICML 2021
(https://arxiv.org/abs/2102.11417).

Memory (docs/units/lmu.md). The continuous system θ ṁ = A m + B u with
    A[i, j] = (2i + 1) · (−1 if i < j else (−1)^(i−j+1)),   B[i] = (2i + 1)(−1)^i,   i, j < d,
compresses the window u(t − θ .. t) onto d shifted Legendre polynomials:
u(t − rθ) ≈ Σ_i P_i(2r − 1) m_i(t) for r in [0, 1] (`lmu_decode`). Discretised per step:
    zero-order hold (default):  Ā = exp(A/θ),  B̄ = (A/θ)^{-1}(Ā − I) B/θ, both read off ONE
        matrix exponential exp([[A/θ, B/θ], [0, 0]]) = [[Ā, B̄], [0, 1]], in float64;
    Euler:  Ā = I + A/θ,  B̄ = B/θ (stable only for θ of about 4d or more; a warning says so).
The recurrence m_t = Ā m_{t−1} + B̄ u_t is linear and time-invariant, so
    m_t = Ā^t m_0 + Σ_{j=0}^{t−1} H_j u_{t−j},     H_j = Ā^j B̄  (the impulse response),
a causal convolution (the op `memrnn.ops.lti`) plus the free response of the carried state. The
parallel layer never forms every m_t: W_m m_t = Σ_j (W_m H_j) u_{t−j}, so it convolves u with
the projected impulse response W_m H (built once per call, T·C·d·H work, independent of the
batch) and gets the final memory m_T from one product of the reversed u with H.

Parallel LMU, one layer, C = memory_d channels sharing one memory system:
    u_t = f1(U x_t + b_u) ∈ ℝ^C,   m_t = Ā m_{t−1} + B̄ u_t (per channel),
    o_t = f2(W_m m_t + W_x x_t + b_o)           (m_t flattened to C·d features).
Original LMU cell:
    u_t = e_xᵀ x_t + e_hᵀ h_{t−1} + e_mᵀ m_{t−1},   m_t = Ā m_{t−1} + B̄ u_t,
    h_t = f(W_x x_t + W_h h_{t−1} + W_m m_t + b).

Names: `ParallelLMU` is the parallel layer, `LMUCell` the sequential cell, and `LMU` the layer
that picks between them: it has *no feedback* when the memory input u_t depends on x_t only
(hidden_to_memory=False, memory_to_memory=False) and the hidden has no h_{t−1} term
(hidden_to_hidden=False). Then h_t = f(W_m m_t + W_x x_t + b) with u_t = e_xᵀ x_t is exactly
a ParallelLMU with f1 = identity and no encoder bias, and `LMU` builds one; otherwise it builds
the recurrent `LMUCell`.

Choices marked (ours): the hidden bias b of the cell; default activations (f1 = identity,
f2 = tanh); the fixed matrices Ā, B̄ are non-persistent buffers (recomputed from order, θ
and the discretiser, so they are not in state_dict); the impulse response and the powers
Ā^(2^i) are built on demand for the length a call needs and kept in a small LRU cache on the
module (not buffers, not saved); `readout="final"` returns only the last step's output.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memrnn.ops.lti import causal_conv, choose_method
from memrnn.units.base import RecurrentUnit, check_choice, check_positive_int, register_unit

DISCRETIZERS = ("zoh", "euler")
ACTIVATIONS = ("identity", "relu", "tanh", "gelu")
# How the parallel layer convolves ("auto": `memrnn.ops.lti.choose_method` per call).
CONVS = ("auto", "fft", "direct")
# What a call returns: every step, or only the last (then only m_T is computed).
READOUTS = ("sequence", "final")


# -- the memory system ---------------------------------------------------------------------------
def legendre_matrices(order: int) -> tuple[Tensor, Tensor]:
    """The continuous-time Legendre system (A, B), float64, shapes (d, d) and (d,)
    (docs/units/lmu.md)."""
    order = check_positive_int("order", order, "legendre_matrices")
    i = torch.arange(order, dtype=torch.float64)
    rows, cols = i[:, None], i[None, :]
    sign = torch.where(rows < cols, -1.0, (-1.0) ** (rows - cols + 1))
    a = (2 * rows + 1) * sign
    b = (2 * i + 1) * (-1.0) ** i
    return a, b


def _check_theta(theta: float, owner: str) -> float:
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise ValueError(f"{owner}: `theta` must be a positive number of steps, got {theta!r}")
    if not math.isfinite(theta):
        raise ValueError(f"{owner}: `theta` must be finite, got {theta!r}")
    return float(theta)


def _expm64(m: Tensor) -> Tensor:
    """exp(m) in float64 by scaling and squaring with a long Taylor series.

    torch.linalg.matrix_exp is about 1e-11 off here for small θ-scaled matrices (measured
    against a 40-digit reference), too far from scipy's Padé result for a 1e-12 match. Scaling
    to norm ≤ 1/2 and 20 Taylor terms leaves a truncation error below 1e-25 relative.
    """
    norm = torch.linalg.matrix_norm(m, ord=1).item()
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    scaled = m / 2.0**squarings
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    result, term = eye.clone(), eye
    for k in range(1, 21):
        term = term @ scaled / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


def legendre_system(order: int, theta: float, discretizer: str = "zoh") -> tuple[Tensor, Tensor]:
    """Discretised Legendre memory (Ā, B̄), float64, shapes (order, order) and (order,).

    "zoh" reads both matrices off one matrix exponential of [[A/θ, B/θ], [0, 0]] (the same as
    scipy.signal.cont2discrete(..., method="zoh") with dt = 1); "euler" is I + A/θ, B/θ and
    warns when that map is unstable (spectral radius of Ā ≥ 1).
    """
    owner = "legendre_system"
    order = check_positive_int("order", order, owner)
    theta = _check_theta(theta, owner)
    check_choice("discretizer", discretizer, DISCRETIZERS, owner)
    a, b = legendre_matrices(order)
    if discretizer == "zoh":
        block = torch.zeros(order + 1, order + 1, dtype=torch.float64)
        block[:order, :order] = a / theta
        block[:order, order] = b / theta
        expm = _expm64(block)
        return expm[:order, :order].contiguous(), expm[:order, order].contiguous()
    a_bar = torch.eye(order, dtype=torch.float64) + a / theta
    radius = torch.linalg.eigvals(a_bar).abs().max().item()
    if radius >= 1.0:
        warnings.warn(
            f"legendre_system: Euler discretisation is unstable for order={order}, "
            f"theta={theta:g} (spectral radius of A_bar = {radius:.4f} >= 1); use "
            f"discretizer='zoh' or a larger theta (about 4 * order or more)",
            RuntimeWarning,
            stacklevel=2,
        )
    return a_bar, b / theta


def impulse_response(a_bar: Tensor, b_bar: Tensor, length: int) -> Tensor:
    """H_j = Ā^j B̄ for j = 0..length−1, shape (length, d), in the dtype of the inputs.

    Built by doubling: H_{k..2k−1} = H_{0..k−1} (Ā^k)ᵀ with Ā^k from repeated squaring, so
    log2(length) matrix products instead of `length` matrix-vector products. Pass float64
    matrices (as `legendre_system` returns) and cast the result.
    """
    length = check_positive_int("length", length, "impulse_response")
    h = b_bar.unsqueeze(0)  # (1, d)
    power = a_bar  # Ā^k with k = len(h)
    while h.shape[0] < length:
        h = torch.cat([h, h @ power.T], dim=0)
        if h.shape[0] < length:
            power = power @ power
    return h[:length].contiguous()


def truncation_length(h: Tensor, tol: float) -> int:
    """Fewest leading taps L with ‖H_{L:}‖_F ≤ tol · ‖H‖_F (the dropped tail's relative norm).

    Error bound of the truncated convolution (Cauchy–Schwarz, per batch row and channel): for
    every t, ‖m_t(truncated) − m_t‖_2 ≤ tol · ‖H_{0:T}‖_F · ‖u_{1:t}‖_2.
    """
    if not (isinstance(tol, (int, float)) and 0 <= tol < 1):
        raise ValueError(f"truncation_length: `tol` must be in [0, 1), got {tol!r}")
    energy = (h.double() ** 2).sum(dim=1)  # (L,)
    # tail[k] = Σ_{j >= k} ‖H_j‖²; tail has one extra zero for "drop nothing".
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    within = (tail <= (tol**2) * tail[0]).nonzero()
    return max(1, int(within[0].item()))


def shifted_legendre(order: int, r: Tensor) -> Tensor:
    """P_i(2r − 1) for i < order, shape r.shape + (order,), by Bonnet's recurrence."""
    x = 2 * r - 1
    values = [torch.ones_like(x)]
    if order > 1:
        values.append(x)
    for n in range(1, order - 1):
        values.append(((2 * n + 1) * x * values[n] - n * values[n - 1]) / (n + 1))
    return torch.stack(values, dim=-1)


def lmu_decode(m: Tensor, r: float | Tensor) -> Tensor:
    """Reconstruct the delayed input u(t − rθ) ≈ Σ_i P_i(2r − 1) m_i(t) from a memory state.

    m: (..., d); r a number in [0, 1] (result (...)) or a 1-D tensor of R delays (result
    (..., R)); r = 0 is the newest input, r = 1 the oldest one in the window θ.
    """
    scalar = not isinstance(r, Tensor)
    r_t = torch.as_tensor(r, dtype=m.dtype, device=m.device).reshape(-1)
    if bool(((r_t < 0) | (r_t > 1)).any()):
        raise ValueError(f"lmu_decode: delays r must lie in [0, 1] (fractions of theta), got {r}")
    basis = shifted_legendre(m.shape[-1], r_t)  # (R, d)
    out = m @ basis.T  # (..., R)
    return out.squeeze(-1) if scalar else out


class LegendreMemory:
    """Fixed Ā, B̄ in float64 plus on-demand impulse responses and powers, cached per use.

    Not an nn.Module: nothing here is trained or saved. The LRU cache holds the impulse
    response per (length, truncation, dtype, device), the powers Ā^(2^i), and Ā, B̄ cast.
    """

    def __init__(self, order: int, theta: float, discretizer: str = "zoh", cache_size: int = 32):
        self.order, self.theta, self.discretizer = order, theta, discretizer
        self.a64, self.b64 = legendre_system(order, theta, discretizer)
        self._powers64 = [self.a64]  # Ā^(2^i), float64 on the CPU
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self.cache_size = cache_size

    def _cached(self, key: tuple, build: Callable[[], Tensor]) -> Tensor:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = build()
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def _power64(self, i: int) -> Tensor:
        while len(self._powers64) <= i:
            self._powers64.append(self._powers64[-1] @ self._powers64[-1])
        return self._powers64[i]

    def matrices(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(Ā, B̄) cast to dtype and device."""
        a = self._cached(("A", dtype, device), lambda: self.a64.to(device=device, dtype=dtype))
        b = self._cached(("B", dtype, device), lambda: self.b64.to(device=device, dtype=dtype))
        return a, b

    def power(self, i: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Ā^(2^i) cast to dtype and device."""
        return self._cached(("P", i, dtype, device), lambda: self._power64(i).to(device, dtype))

    def impulse(
        self, length: int, dtype: torch.dtype, device: torch.device, tol: float | None = None
    ) -> Tensor:
        """H_{0:length}, (L, d), truncated to `truncation_length(H, tol)` taps when tol is set."""

        def build() -> Tensor:
            h = self._cached(("H64", length), lambda: self._impulse64(length))
            if tol is not None:
                h = h[: truncation_length(h, tol)]
            return h.to(device=device, dtype=dtype)

        return self._cached(("H", length, tol, dtype, device), build)

    def _impulse64(self, length: int) -> Tensor:
        h = self.b64.unsqueeze(0)
        i = 0
        while h.shape[0] < length:
            h = torch.cat([h, h @ self._power64(i).T], dim=0)
            i += 1
        return h[:length].contiguous()

    def free_response(self, m0: Tensor, steps: int) -> Tensor:
        """Ā^t m0 for t = 1..steps: m0 (B, C, d) -> (B, steps, C, d), by doubling."""
        out = (m0 @ self.power(0, m0.dtype, m0.device).T).unsqueeze(0)  # (1, B, C, d)
        i = 0
        while out.shape[0] < steps:
            out = torch.cat([out, out @ self.power(i, m0.dtype, m0.device).T], dim=0)
            i += 1
        return out[:steps].permute(1, 0, 2, 3)

    def advance(self, m0: Tensor, steps: int) -> Tensor:
        """Ā^steps m0 for m0 (..., d), with one product per set bit of `steps`."""
        out, i = m0, 0
        while steps:
            if steps & 1:
                out = out @ self.power(i, m0.dtype, m0.device).T
            steps >>= 1
            i += 1
        return out


def _activation(name: str, owner: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS, owner)
    return {"identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[name]()


class _FixedMemoryMixin:
    """Holds a LegendreMemory and the Ā, B̄ buffers, re-cast from float64 after .to()/.double()."""

    memory: LegendreMemory

    def _register_memory(
        self,
        order: int,
        theta: float,
        discretizer: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        self.memory = LegendreMemory(order, theta, discretizer)
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer(
            "A_bar", self.memory.a64.to(device=device, dtype=dtype), persistent=False
        )
        self.register_buffer(
            "B_bar", self.memory.b64.to(device=device, dtype=dtype), persistent=False
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        super()._apply(fn, recurse)
        # Casting the float32 buffer to float64 would keep float32 rounding: recast the masters.
        self.A_bar = self.memory.a64.to(device=self.A_bar.device, dtype=self.A_bar.dtype)
        self.B_bar = self.memory.b64.to(device=self.B_bar.device, dtype=self.B_bar.dtype)
        return self


# -- parallel LMU --------------------------------------------------------------------------------
class LMUState(NamedTuple):
    m: Tensor  # (B, memory_d, order): the Legendre memory of each channel


@register_unit("plmu", order=8, theta=16)
class ParallelLMU(_FixedMemoryMixin, RecurrentUnit):
    """Parallel Legendre Memory Unit layer (Chilkuri & Eliasmith, ICML 2021).

    u_t = f1(U x_t + b_u);  m_t = Ā m_{t−1} + B̄ u_t (per channel);
    o_t = f2(W_m m_t + W_x x_t + b_o).
    The memory is a causal convolution with the impulse response H_j = Ā^j B̄ plus the free
    response Ā^t m_0 of a carried state, so chunked calls equal one call in every setting.

    Args:
        input_size: D, features per step.
        hidden_size: H, output features per step.
        order: d, Legendre polynomials per memory channel.
        theta: θ, the memory window in steps.
        memory_d: C, memory channels (default 1), all sharing Ā, B̄.
        mode: "parallel" (default: the convolution) or "recurrent" (step by step, same
            weights).
        conv: how the parallel mode convolves: "auto" (default: the direct convolution below
            `memrnn.ops.lti.DIRECT_FFT_CROSSOVER` steps, the FFT from there on), "fft" (padded
            to 2T) or "direct" (a sliding window, optionally truncated).
        readout: "sequence" (default, y: (B, T, H)) or "final" (the last step only,
            y: (B, 1, H); the parallel mode then computes only m_T, one matrix product with
            the reversed u).
        memory_activation: f1, one of "identity" (default), "relu", "tanh", "gelu".
        hidden_activation: f2, same choices, default "tanh".
        discretizer: "zoh" (default) or "euler".
        truncation_tol: the direct convolution keeps the fewest taps whose dropped tail has
            relative norm ≤ tol (`truncation_length` states the error bound); None (default)
            keeps all.
        input_skip: include W_x x_t (default True).
        encoder_bias: include b_u (default True).
        backend: the backend of the convolution op, `memrnn.ops.lti` (default "auto").

    Shapes: x (B, T, D) -> y (B, T, H) (or (B, 1, H), see above); state LMUState(m: (B, C, d)).

    Example:
        >>> layer = ParallelLMU(1, 32, order=16, theta=100)
        >>> y, state = layer(torch.randn(4, 300, 1))
        >>> y2, _ = layer(torch.randn(4, 50, 1), state)  # streams on from the carried memory
        >>> assert y.shape == (4, 300, 32) and state.m.shape == (4, 1, 16)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_d: int = 1,
        mode: str = "parallel",
        conv: str = "auto",
        readout: str = "sequence",
        memory_activation: str = "identity",
        hidden_activation: str = "tanh",
        discretizer: str = "zoh",
        truncation_tol: float | None = None,
        input_skip: bool = True,
        encoder_bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, mode=mode, backend=backend)
        owner = type(self).__name__
        self.order = check_positive_int("order", order, owner)
        self.theta = _check_theta(theta, owner)
        self.memory_d = check_positive_int("memory_d", memory_d, owner)
        check_choice("discretizer", discretizer, DISCRETIZERS, owner)
        if truncation_tol is not None and not (
            isinstance(truncation_tol, (int, float)) and 0 <= truncation_tol < 1
        ):
            raise ValueError(
                f"{owner}: `truncation_tol` must be None or in [0, 1), got {truncation_tol!r}"
            )
        self.truncation_tol = truncation_tol
        self.conv = check_choice("conv", conv, CONVS, owner)
        self.readout = check_choice("readout", readout, READOUTS, owner)
        self.memory_activation = _activation(memory_activation, owner)
        self.hidden_activation = _activation(hidden_activation, owner)
        factory = {"device": device, "dtype": dtype}
        self.encoder = nn.Linear(input_size, memory_d, bias=encoder_bias, **factory)  # U, b_u
        self.memory_out = nn.Linear(memory_d * order, hidden_size, **factory)  # W_m, b_o
        self.input_out = (
            nn.Linear(input_size, hidden_size, bias=False, **factory) if input_skip else None
        )
        self._register_memory(self.order, self.theta, discretizer, device, dtype)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LMUState:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        return LMUState(
            torch.zeros(batch_size, self.memory_d, self.order, device=device, dtype=dtype)
        )

    def resolve_conv(self, seq_len: int) -> str:
        """The convolution ("fft" or "direct") a parallel call with `seq_len` steps runs."""
        return choose_method(seq_len) if self.conv == "auto" else self.conv

    def _readout(self, m: Tensor, x: Tensor) -> Tensor:
        """o = f2(W_m m + W_x x + b_o) for m (..., C, d) and x (..., D)."""
        pre = self.memory_out(m.flatten(-2))
        if self.input_out is not None:
            pre = pre + self.input_out(x)
        return self.hidden_activation(pre)

    def _step(self, x_t: Tensor, state: LMUState) -> tuple[Tensor, LMUState]:
        a_bar, b_bar = self.memory.matrices(x_t.dtype, x_t.device)
        u = self.memory_activation(self.encoder(x_t))  # (B, C)
        m = state.m @ a_bar.T + u.unsqueeze(-1) * b_bar  # (B, C, d)
        return self._readout(m, x_t), LMUState(m)

    def _last_step_only(self) -> bool:
        return self.readout == "final"

    def forward(
        self, x: Tensor, state: LMUState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, LMUState]:
        x = self.check_input(x)
        batch, steps = x.shape[:2]
        carried = state is not None
        if carried:
            state = self.check_state(state, batch, dtype=x.dtype, device=x.device)
        else:
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        lengths = self.check_lengths(lengths, x)
        if lengths is not None:
            # The convolution has no step to freeze: segments between the lengths, or the
            # masked step loop in recurrent mode (RecurrentUnit._forward_lengths).
            return self._forward_lengths(x, state, lengths)
        last_only = self._last_step_only()
        # An empty batch (B = 0) takes the step loop: the FFT and reshapes reject it.
        if self.mode == "recurrent" or batch == 0:
            y, state = self._forward_recurrent(x, state)
            return (y[:, -1:] if last_only else y), state
        u = self.memory_activation(self.encoder(x))  # (B, T, C)
        h = self.memory.impulse(steps, x.dtype, x.device)
        # m_T = Σ_j H_j u_{T−j}: the reversed inputs times the impulse response, exact in every
        # setting (truncation only touches the outputs).
        m_last = u.flip(1).transpose(1, 2) @ h  # (B, C, d)
        if carried:
            m_last = m_last + self.memory.advance(state.m, steps)
        if last_only:
            return self._readout(m_last, x[:, -1]).unsqueeze(1), LMUState(m_last)
        method = self.resolve_conv(steps)
        if method == "direct" and self.truncation_tol is not None:
            h = self.memory.impulse(steps, x.dtype, x.device, self.truncation_tol)
        # W_m m_t = Σ_j (W_m H_j) u_{t−j}: fold W_m into the impulse response (T·C·d·H work
        # once) rather than project every m_t (B·T·C·d·H work).
        weight = self.memory_out.weight.view(self.hidden_size, self.memory_d, self.order)
        g = torch.einsum("ld,hcd->lch", h, weight)  # (L, C, H)
        pre = causal_conv(u, g, method, self.backend) + self.memory_out.bias  # (B, T, H)
        if carried:
            free = self.memory.free_response(state.m, steps)  # (B, T, C, d)
            pre = pre + free.flatten(2) @ self.memory_out.weight.T
        if self.input_out is not None:
            pre = pre + self.input_out(x)
        return self.hidden_activation(pre), LMUState(m_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, order={self.order}, theta={self.theta:g}, "
            f"memory_d={self.memory_d}, conv={self.conv!r}, readout={self.readout!r}, "
            f"truncation_tol={self.truncation_tol}"
        )


# -- original LMU --------------------------------------------------------------------------------
class LMUCellState(NamedTuple):
    m: Tensor  # (B, memory_d, order): Legendre memory
    h: Tensor  # (B, H): hidden state


class LMUCell(_FixedMemoryMixin, RecurrentUnit):
    """The original LMU cell (Voelker, Kajić, Eliasmith, NeurIPS 2019); recurrent mode only.

    u_t = e_xᵀ x_t + e_hᵀ h_{t−1} + e_mᵀ m_{t−1};  m_t = Ā m_{t−1} + B̄ u_t;
    h_t = f(W_x x_t + W_h h_{t−1} + W_m m_t + b).

    Args:
        input_size, hidden_size, order, theta, memory_d (default 1): as in `ParallelLMU`.
        hidden_activation: f, one of "identity", "relu", "tanh" (default), "gelu".
        discretizer: "zoh" (default) or "euler".
        hidden_to_memory: include e_h (default True).  memory_to_memory: include e_m (default True).
        input_to_hidden: include W_x (default True).  hidden_to_hidden: include W_h (default True).
        The encoders e_x, e_h, e_m have no bias; the hidden has one bias b (ours).

    Shapes: x (B, T, D) -> y = h (B, T, H); state LMUCellState(m: (B, C, d), h: (B, H)).

    Example:
        >>> cell = LMUCell(1, 32, order=8, theta=50)
        >>> y, state = cell(torch.randn(4, 100, 1))
        >>> assert y.shape == (4, 100, 32) and state.m.shape == (4, 1, 8)
    """

    modes = ("recurrent",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_d: int = 1,
        hidden_activation: str = "tanh",
        discretizer: str = "zoh",
        hidden_to_memory: bool = True,
        memory_to_memory: bool = True,
        input_to_hidden: bool = True,
        hidden_to_hidden: bool = True,
        mode: str | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, mode=mode, backend=backend)
        owner = type(self).__name__
        self.order = check_positive_int("order", order, owner)
        self.theta = _check_theta(theta, owner)
        self.memory_d = check_positive_int("memory_d", memory_d, owner)
        check_choice("discretizer", discretizer, DISCRETIZERS, owner)
        self.hidden_activation = _activation(hidden_activation, owner)
        factory = {"device": device, "dtype": dtype}
        features = memory_d * order
        self.input_encoder = nn.Linear(input_size, memory_d, bias=False, **factory)  # e_x
        self.hidden_encoder = (
            nn.Linear(hidden_size, memory_d, bias=False, **factory) if hidden_to_memory else None
        )  # e_h
        self.memory_encoder = (
            nn.Linear(features, memory_d, bias=False, **factory) if memory_to_memory else None
        )  # e_m
        self.memory_out = nn.Linear(features, hidden_size, **factory)  # W_m, b
        self.input_out = (
            nn.Linear(input_size, hidden_size, bias=False, **factory) if input_to_hidden else None
        )
        self.hidden_out = (
            nn.Linear(hidden_size, hidden_size, bias=False, **factory) if hidden_to_hidden else None
        )
        self._register_memory(self.order, self.theta, discretizer, device, dtype)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LMUCellState:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        return LMUCellState(
            torch.zeros(batch_size, self.memory_d, self.order, device=device, dtype=dtype),
            torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
        )

    def _step(self, x_t: Tensor, state: LMUCellState) -> tuple[Tensor, LMUCellState]:
        a_bar, b_bar = self.memory.matrices(x_t.dtype, x_t.device)
        m, h = state
        u = self.input_encoder(x_t)  # (B, C)
        if self.hidden_encoder is not None:
            u = u + self.hidden_encoder(h)
        if self.memory_encoder is not None:
            u = u + self.memory_encoder(m.flatten(1))
        m = m @ a_bar.T + u.unsqueeze(-1) * b_bar  # (B, C, d)
        pre = self.memory_out(m.flatten(1))
        if self.input_out is not None:
            pre = pre + self.input_out(x_t)
        if self.hidden_out is not None:
            pre = pre + self.hidden_out(h)
        h = self.hidden_activation(pre)
        return h, LMUCellState(m, h)


@register_unit("lmu", order=8, theta=16)
class LMU(RecurrentUnit):
    """LMU layer that runs in parallel whenever its configuration allows (see the module doc).

    With hidden_to_memory = memory_to_memory = hidden_to_hidden = False (no feedback), `core` is
    a `ParallelLMU` (f1 = identity, no encoder bias, input skip = input_to_hidden) and the
    parallel mode is available; otherwise `core` is an `LMUCell` and the mode is "recurrent".
    Arguments are those of `LMUCell`; `conv` and `truncation_tol` apply to the parallel core,
    `mode` and `backend` to the core either way.

    Example:
        >>> layer = LMU(1, 32, order=8, theta=50, hidden_to_memory=False,
        ...             memory_to_memory=False, hidden_to_hidden=False)
        >>> y, state = layer(torch.randn(4, 100, 1))
        >>> assert isinstance(layer.core, ParallelLMU) and y.shape == (4, 100, 32)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_d: int = 1,
        hidden_activation: str = "tanh",
        discretizer: str = "zoh",
        truncation_tol: float | None = None,
        hidden_to_memory: bool = True,
        memory_to_memory: bool = True,
        input_to_hidden: bool = True,
        hidden_to_hidden: bool = True,
        mode: str | None = None,
        conv: str = "auto",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.feedback_free = not (hidden_to_memory or memory_to_memory or hidden_to_hidden)
        # The valid modes depend on the configuration, so they are set per instance.
        self.__dict__["modes"] = ParallelLMU.modes if self.feedback_free else LMUCell.modes
        super().__init__(input_size, hidden_size, backend=backend)
        if self.feedback_free:
            self.core: RecurrentUnit = ParallelLMU(
                input_size,
                hidden_size,
                order,
                theta,
                memory_d,
                conv=conv,
                memory_activation="identity",
                hidden_activation=hidden_activation,
                discretizer=discretizer,
                truncation_tol=truncation_tol,
                input_skip=input_to_hidden,
                encoder_bias=False,
                backend=backend,
                device=device,
                dtype=dtype,
            )
        else:
            self.core = LMUCell(
                input_size,
                hidden_size,
                order,
                theta,
                memory_d,
                hidden_activation,
                discretizer,
                hidden_to_memory,
                memory_to_memory,
                input_to_hidden,
                hidden_to_hidden,
                backend=backend,
                device=device,
                dtype=dtype,
            )
        self.mode = self.modes[0] if mode is None else mode

    def _set_mode(self, value: str) -> None:
        RecurrentUnit.mode.fset(self, value)
        if "core" in self._modules:
            self.core.mode = value

    mode = property(RecurrentUnit.mode.fget, _set_mode)

    def _set_backend(self, value: str) -> None:
        RecurrentUnit.backend.fset(self, value)
        if "core" in self._modules:
            self.core.backend = value

    backend = property(RecurrentUnit.backend.fget, _set_backend)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NamedTuple:
        return self.core.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, state: NamedTuple | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, NamedTuple]:
        return self.core(x, state, lengths=lengths)

    def step(self, x_t: Tensor, state: NamedTuple | None = None) -> tuple[Tensor, NamedTuple]:
        return self.core.step(x_t, state)

    def _step(self, x_t: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        return self.core._step(x_t, state)


# -- the psMNIST configuration of Chilkuri & Eliasmith (2021) ------------------------------------
PSMNIST_PAPER_PARAMS = 165_000


def psmnist_parameter_count(input_skip: bool = True, verbose: bool = False) -> int:
    """Parameters of the paper's psMNIST model: ParallelLMU(1 → 346, order 468, θ = 784,
    one memory channel) and a 10-class linear head. With the input skip W_x and all biases
    this is 166,092 (+0.66% over the paper's "165k"); without W_x, 165,746 (+0.45%)."""
    layer = ParallelLMU(
        1, 346, order=468, theta=784, memory_d=1, input_skip=input_skip, device="meta"
    )
    head = nn.Linear(346, 10, device="meta")
    parts = {name: p.numel() for name, p in layer.named_parameters()}
    parts.update({f"head.{name}": p.numel() for name, p in head.named_parameters()})
    total = sum(parts.values())
    if verbose:
        for name, count in parts.items():
            print(f"{name:28s} {count:>9,d}")
        print(
            f"{'total':28s} {total:>9,d}  (paper: ~{PSMNIST_PAPER_PARAMS:,d}, "
            f"{100 * (total / PSMNIST_PAPER_PARAMS - 1):+.2f}%)"
        )
    return total


if __name__ == "__main__":
    psmnist_parameter_count(input_skip=True, verbose=True)
    print()
    psmnist_parameter_count(input_skip=False, verbose=True)


__all__ = [
    "ACTIVATIONS",
    "CONVS",
    "READOUTS",
    "DISCRETIZERS",
    "LMU",
    "LMUCell",
    "LMUCellState",
    "LMUState",
    "LegendreMemory",
    "ParallelLMU",
    "impulse_response",
    "legendre_matrices",
    "legendre_system",
    "lmu_decode",
    "psmnist_parameter_count",
    "shifted_legendre",
    "truncation_length",
]
