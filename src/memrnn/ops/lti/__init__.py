"""The LMU's linear time-invariant memory as one op: a causal convolution (docs/units/lmu.md).

A linear time-invariant recurrence with a dense state matrix, m_t = Ā m_{t-1} + B̄ u_t with
m_0 = 0, has the closed form m_t = Σ_{j=0}^{t-1} H_j u_{t-j} with the impulse response
H_j = Ā^j B̄. `causal_conv` computes, for u: (B, T, C) and h: (L, N),

    y[b, t, c, n] = Σ_{j=0}^{min(t, L-1)} h[j, n] · u[b, t-j, c]          y: (B, T, C, N)

(every input channel is convolved with every column of h); a 1-D h: (L,) gives y: (B, T, C),
one impulse response shared by all channels, and a mixing h: (L, C, N) sums over the channels,
y: (B, T, N). Taps of h beyond T are never used; an h shorter than T is a truncated impulse
response.

Backends: `naive` (the sum over taps as a loop), `torch` (two methods: "fft", zero-padded
to 2T, O(T log T), and "direct", a sliding window times h, O(T·L)).
"""

from __future__ import annotations

from torch import Tensor

from memrnn.ops import dispatch

METHODS = ("auto", "fft", "direct")
# Below this many steps `method="auto"` uses the direct convolution. Measured with
# `python -m benchmarks.lmu --crossover` (training step, B = 32, orders 8, 64, 468, 2-core CPU):
# direct was faster up to T = 96, the FFT from T = 128 to 256 on.
DIRECT_FFT_CROSSOVER = 128


def check_conv_args(u: Tensor, h: Tensor, owner: str) -> None:
    """u must be (B, T, C) and h (L,), (L, N) or (L, C, N), of u's dtype and device."""
    if u.dim() != 3:
        raise ValueError(f"{owner}: `u` must have shape (B, T, C); got {tuple(u.shape)}")
    if h.dim() not in (1, 2, 3) or h.shape[0] == 0:
        raise ValueError(
            f"{owner}: `h` must have shape (L,), (L, N) or (L, C, N) with L >= 1; "
            f"got {tuple(h.shape)}"
        )
    if h.dim() == 3 and h.shape[1] != u.shape[2]:
        raise ValueError(
            f"{owner}: a mixing `h` (L, C, N) needs C = {u.shape[2]} channels; got {tuple(h.shape)}"
        )
    if u.dtype != h.dtype or u.device != h.device:
        raise TypeError(
            f"{owner}: `u` and `h` must share dtype and device; got {u.dtype}/{u.device} "
            f"and {h.dtype}/{h.device}"
        )


def choose_method(seq_len: int, crossover: int = DIRECT_FFT_CROSSOVER) -> str:
    """The rule behind `method="auto"`: "direct" below `crossover` steps, "fft" from there on."""
    return "direct" if seq_len < crossover else "fft"


def causal_conv(u: Tensor, h: Tensor, method: str = "auto", backend: str = "auto") -> Tensor:
    """The causal convolution of u (B, T, C) with the impulse response h (see the module notes),
    differentiable in u and h. `method`: "auto" (`choose_method`), "fft" or "direct" (the
    torch backend's two ways; the naive sum over taps has one)."""
    if method not in METHODS:
        raise ValueError(f"causal_conv: unknown method {method!r}; expected one of {METHODS}")
    check_conv_args(u, h, "causal_conv")
    # No compiled kernel beats the FFT's and the GEMM's own: `auto` takes the torch ops.
    backend = dispatch.resolve("lti", backend, u.device, u.dtype, compiled=False)
    method = choose_method(u.shape[1]) if method == "auto" else method
    return dispatch.implementation("lti", backend, "causal_conv")(u, h, method)


__all__ = [
    "DIRECT_FFT_CROSSOVER",
    "METHODS",
    "causal_conv",
    "check_conv_args",
    "choose_method",
]
