"""Step functions with surrogate gradients: exact forward, smooth backward.

The Heaviside step H(u) (with H(0) = 1) and the sign s(u) = 2 H(u) - 1 in {-1, +1} are
computed exactly in the forward pass. Their derivative is zero almost everywhere, so the
backward pass replaces dH/du by a surrogate derivative sigma_k(u) of sharpness k, and
ds/du by 2 sigma_k(u). Every built-in surrogate integrates to one over the real line, so it is
the derivative of a smoothed step that goes from 0 to 1:

    atan            sigma(u) = k / (1 + (pi k u)^2)            (default; peak k)
    fast-sigmoid    sigma(u) = k / (2 (1 + k |u|)^2)           (of 1/2 + k u / (2 (1 + k |u|)))
    triangle        sigma(u) = k max(0, 1 - k |u|)             (support |u| < 1/k)
    straight-through sigma(u) = k                              (gradient passed through unchanged)

The straight-through estimator is the only one that does not integrate to one (ours: the
classic identity-gradient form, scaled by k). A surrogate is named by one of these strings or
given as a callable `u -> dH/du` (a tensor of u's shape).

Example:
    >>> u = torch.tensor([-0.5, 0.0, 2.0], requires_grad=True)
    >>> z = heaviside(u, surrogate="atan")
    >>> z.sum().backward()
    >>> assert z.tolist() == [0.0, 1.0, 1.0] and u.grad.shape == (3,)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

SurrogateFn = Callable[[Tensor], Tensor]


def atan_derivative(u: Tensor, sharpness: float = 1.0) -> Tensor:
    """k / (1 + (pi k u)^2): the derivative of 1/2 + atan(pi k u) / pi."""
    return sharpness / (1.0 + (math.pi * sharpness * u) ** 2)


def fast_sigmoid_derivative(u: Tensor, sharpness: float = 1.0) -> Tensor:
    """k / (2 (1 + k |u|)^2): the derivative of 1/2 + k u / (2 (1 + k |u|))."""
    return sharpness / (2.0 * (1.0 + sharpness * u.abs()) ** 2)


def triangle_derivative(u: Tensor, sharpness: float = 1.0) -> Tensor:
    """k max(0, 1 - k |u|): the derivative of a piecewise-quadratic ramp of half-width 1/k."""
    return sharpness * (1.0 - sharpness * u.abs()).clamp_min(0.0)


def straight_through_derivative(u: Tensor, sharpness: float = 1.0) -> Tensor:
    """The constant k: the incoming gradient passes through (scaled by k)."""
    return torch.full_like(u, sharpness)


SURROGATES: dict[str, Callable[..., Tensor]] = {
    "atan": atan_derivative,
    "fast-sigmoid": fast_sigmoid_derivative,
    "triangle": triangle_derivative,
    "straight-through": straight_through_derivative,
}


def get_surrogate(surrogate: str | SurrogateFn = "atan", sharpness: float = 1.0) -> SurrogateFn:
    """The surrogate derivative `u -> dH/du` for a name in SURROGATES or a callable.

    A callable is returned unchanged (its own sharpness is its business); a name is bound to
    `sharpness`. Unknown names and non-positive sharpness raise ValueError.
    """
    if callable(surrogate):
        return surrogate
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(
            f"unknown surrogate {surrogate!r}; expected one of {tuple(SURROGATES)} or a callable"
        )
    if not isinstance(sharpness, (int, float)) or not math.isfinite(sharpness) or sharpness <= 0:
        raise ValueError(f"surrogate sharpness must be a positive finite number, got {sharpness!r}")
    return partial(SURROGATES[surrogate], sharpness=float(sharpness))


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, derivative: SurrogateFn, signed: bool) -> Tensor:
        ctx.save_for_backward(u)
        ctx.derivative = derivative
        ctx.signed = signed
        # NaN stays NaN (a comparison would read it as "below threshold" and drop it).
        step = torch.where(torch.isnan(u), u, (u >= 0).to(u.dtype))
        # sign = 2 H - 1, so one Function serves both steps.
        return 2.0 * step - 1.0 if signed else step

    @staticmethod
    def backward(ctx, grad: Tensor):
        (u,) = ctx.saved_tensors
        slope = ctx.derivative(u)
        if ctx.signed:
            slope = 2.0 * slope
        return grad * slope, None, None


def heaviside(u: Tensor, surrogate: str | SurrogateFn = "atan", sharpness: float = 1.0) -> Tensor:
    """H(u) in {0, 1} with H(0) = 1; the backward pass uses the surrogate derivative."""
    return _Heaviside.apply(u, get_surrogate(surrogate, sharpness), False)


def sign(u: Tensor, surrogate: str | SurrogateFn = "atan", sharpness: float = 1.0) -> Tensor:
    """sign(u) in {-1, +1} with sign(0) = +1; the backward pass uses twice the surrogate."""
    return _Heaviside.apply(u, get_surrogate(surrogate, sharpness), True)


__all__ = [
    "SURROGATES",
    "SurrogateFn",
    "atan_derivative",
    "fast_sigmoid_derivative",
    "get_surrogate",
    "heaviside",
    "sign",
    "straight_through_derivative",
    "triangle_derivative",
]
