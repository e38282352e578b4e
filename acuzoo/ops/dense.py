"""Dense-kernel path (Theorem 2): splat each synapse onto its integer neighbours, then run
the platform's convolution. Cost grows with the square of the positions' spread, so the
dispatcher uses it where the box stays small or where there are many position sets
(depthwise), for which one dense conv beats per-set work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import kernel_radius
from .hat import hat

# The extrapolated kernel and the splat weights it is built from grow with the square of
# the spread: a synapse 1e4 px away would need gigabytes. Beyond this many elements
# (512 MiB in float32) the dense path refuses; the other paths do not grow with the spread.
DENSE_MAX_KERNEL_ELEMENTS = 2**27


def dense_kernel_elements(weight_shape, positions_shape, radius: tuple[int, int]) -> int:
    """Elements of the larger of the dense path's two big tensors for a box of ``radius``:
    the kernel (C_out, C_in // groups, R, S) and the splat weights (P, K, R, S)."""
    c_out, c_per_group, k = weight_shape
    box = (2 * radius[0] + 1) * (2 * radius[1] + 1)
    return max(c_out * c_per_group, positions_shape[0] * k) * box


def check_dense_kernel_size(weight_shape, positions_shape, radius: tuple[int, int], dtype: torch.dtype) -> None:
    """Refuse, naming the size and the limit, a dense kernel beyond DENSE_MAX_KERNEL_ELEMENTS."""
    elements = dense_kernel_elements(weight_shape, positions_shape, radius)
    if elements > DENSE_MAX_KERNEL_ELEMENTS:
        size_gib = elements * torch.empty((), dtype=dtype).element_size() / 2**30
        side = (2 * radius[0] + 1, 2 * radius[1] + 1)
        raise ValueError(
            f"the dense path would build a {side[0]} x {side[1]} kernel to reach these positions' "
            f"farthest synapse: {elements:,} elements ({size_gib:.3g} GiB in {dtype}), beyond its "
            f"limit of DENSE_MAX_KERNEL_ELEMENTS = {DENSE_MAX_KERNEL_ELEMENTS:,} elements; use "
            "path='columns' or 'auto', whose cost does not grow with the spread"
        )


def extrapolated_kernel(
    weight: torch.Tensor, positions: torch.Tensor, radius: tuple[int, int]
) -> torch.Tensor:
    """The (C_out, C_in // groups, 2*ra+1, 2*rb+1) conv kernel equal to the ACU (eq. 13-15).

    Differentiable in weight and positions; the position slope follows the central rule.
    """
    c_out, c_per_group, k = weight.shape
    p = positions.shape[0]
    dtype = torch.promote_types(weight.dtype, positions.dtype)
    positions = positions.to(dtype)
    ra, rb = radius
    rows = torch.arange(-ra, ra + 1, device=weight.device, dtype=dtype)
    cols = torch.arange(-rb, rb + 1, device=weight.device, dtype=dtype)
    row_w = hat(rows - positions[..., 0:1])  # (P, K, R)
    col_w = hat(cols - positions[..., 1:2])  # (P, K, S)
    spread = row_w[..., :, None] * col_w[..., None, :]  # (P, K, R, S)
    w = weight.to(dtype).reshape(p, c_out // p, c_per_group, k)
    kernel = torch.einsum("pock,pkrs->pocrs", w, spread)
    return kernel.reshape(c_out, c_per_group, 2 * ra + 1, 2 * rb + 1)


class _TightConv(torch.autograd.Function):
    """Conv with the tight centre of a kernel whose outer ring is zero in value but not in
    gradient: the forward skips the ring, the backward returns the ring's gradient, which the
    position slope at integer border taps needs."""

    @staticmethod
    def forward(x, kernel_ext, bias, stride, radius, margin, groups):
        ma, mb = margin
        kh, kw = kernel_ext.shape[-2:]
        tight = kernel_ext[:, :, ma : kh - ma, mb : kw - mb]
        return F.conv2d(x, tight, bias, stride, radius, 1, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kernel_ext, bias, stride, radius, margin, groups = inputs
        ctx.save_for_backward(x, kernel_ext)
        ctx.conf = (stride, radius, margin, groups, bias is not None)

    @staticmethod
    def backward(ctx, grad):
        x, kernel_ext = ctx.saved_tensors
        stride, (ra, rb), (ma, mb), groups, has_bias = ctx.conf
        need_x, need_k, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [kernel_ext.shape[0]] if has_bias else None
        kh, kw = kernel_ext.shape[-2:]
        tight = kernel_ext[:, :, ma : kh - ma, mb : kw - mb]
        conv_bwd = torch.ops.aten.convolution_backward
        grad_x = grad_k = grad_b = None
        if need_x or (need_b and has_bias):
            grad_x, _, grad_b = conv_bwd(
                grad, x, tight, bias_sizes, stride, (ra, rb), (1, 1), False, (0, 0), groups,
                [need_x, False, bool(need_b and has_bias)],
            )
        if need_k:
            _, grad_k, _ = conv_bwd(
                grad, x, kernel_ext, None, stride, (ra + ma, rb + mb), (1, 1), False, (0, 0),
                groups, [False, True, False],
            )
        return grad_x, grad_k, grad_b, None, None, None, None


def dense_active_conv2d(x, weight, positions, bias, stride, groups) -> torch.Tensor:
    """ACU through one ordinary conv of the extrapolated kernel (arguments already checked).

    Refuses (ValueError) a kernel beyond DENSE_MAX_KERNEL_ELEMENTS rather than allocate it.
    """
    ra, ra_ext = kernel_radius(positions[..., 0])
    rb, rb_ext = kernel_radius(positions[..., 1])
    needs_ring = weight.requires_grad or positions.requires_grad
    margin = (ra_ext - ra, rb_ext - rb) if needs_ring else (0, 0)
    radius = (ra + margin[0], rb + margin[1])
    check_dense_kernel_size(weight.shape, positions.shape, radius, torch.promote_types(weight.dtype, positions.dtype))
    kernel = extrapolated_kernel(weight, positions, radius)
    kernel = kernel.to(x.dtype)
    if bias is not None:
        bias = bias.to(x.dtype)
    return _TightConv.apply(x, kernel, bias, stride, (ra, rb), margin, groups)
