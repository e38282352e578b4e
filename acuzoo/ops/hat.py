"""The 1-D bilinear ("hat") weight with the ACU's derivative rule.

Bilinear interpolation along one axis reads ``sum_i x[i] * hat(i - a)`` with
``hat(t) = max(0, 1 - |t|)``. ``hat`` has no derivative at t in {-1, 0, 1}, which is
exactly where every position starts (the integer grid). DESIGN.md fixes the rule:
use the mean of the left and right derivatives there. Every PyTorch path of the
operator builds its interpolation weights from this one function, so the rule lives
in one place.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def hat_slope(t: torch.Tensor) -> torch.Tensor:
    """d hat / dt with the central rule: -sign(t) inside, -sign(t)/2 at |t| = 1, 0 at 0."""
    a = t.abs()
    magnitude = torch.where(a < 1, 1.0, torch.where(a == 1, 0.5, 0.0)).to(t.dtype)
    return -torch.sign(t) * magnitude


class _Hat(torch.autograd.Function):
    # forward and setup_context apart: torch.func transforms (vjp) need this form.
    @staticmethod
    def forward(t: torch.Tensor) -> torch.Tensor:
        return (1 - t.abs()).clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (t,) = ctx.saved_tensors
        return grad * hat_slope(t)


def hat(t: torch.Tensor) -> torch.Tensor:
    """``max(0, 1 - |t|)``, differentiated by the mean of one-sided derivatives at kinks."""
    return _Hat.apply(t)
