import math

import pytest
import torch

from memrnn.ops.surrogate import SURROGATES, get_surrogate, heaviside, sign


def test_forward_is_exact_with_h0_equal_one():
    u = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 3.0])
    assert heaviside(u).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert sign(u).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_backward_uses_the_surrogate_and_sign_doubles_it(name):
    u = torch.linspace(-0.4, 0.4, 9, dtype=torch.float64, requires_grad=True)
    (grad_h,) = torch.autograd.grad(heaviside(u, name, 2.0).sum(), u)
    (grad_s,) = torch.autograd.grad(sign(u, name, 2.0).sum(), u)
    expected = get_surrogate(name, 2.0)(u.detach())
    torch.testing.assert_close(grad_h, expected)
    torch.testing.assert_close(grad_s, 2 * expected)
    assert torch.isfinite(grad_h).all() and (grad_h > 0).any()


def test_atan_matches_the_formula():
    u = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    for k in (1.0, 3.0):
        expected = k / (1 + (math.pi * k * u) ** 2)
        torch.testing.assert_close(get_surrogate("atan", k)(u), expected)


@pytest.mark.parametrize("name", ["atan", "fast-sigmoid", "triangle"])
def test_smooth_surrogates_integrate_to_one(name):
    u = torch.linspace(-2000.0, 2000.0, 4_000_001, dtype=torch.float64)
    area = torch.trapezoid(get_surrogate(name, 1.0)(u), u).item()
    # atan and fast-sigmoid have heavy tails: what lies beyond |u| = 2000 is ~1e-3 and ~2.5e-4.
    assert area == pytest.approx(1.0, abs=2e-3)


def test_straight_through_passes_the_gradient():
    u = torch.tensor([-5.0, 0.0, 7.0], requires_grad=True)
    (grad,) = torch.autograd.grad(heaviside(u, "straight-through").sum(), u)
    assert grad.tolist() == [1.0, 1.0, 1.0]


def test_callable_surrogate():
    u = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad(sign(u, lambda v: v * 0 + 0.25).sum(), u)
    assert grad.tolist() == [0.5, 0.5]


def test_unknown_surrogate_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown surrogate 'sigmoid'.*atan.*fast-sigmoid.*tri"):
        heaviside(torch.zeros(1), "sigmoid")


@pytest.mark.parametrize("k", [0.0, -1.0, float("inf")])
def test_bad_sharpness(k):
    with pytest.raises(ValueError, match="sharpness must be a positive finite number"):
        get_surrogate("atan", k)
