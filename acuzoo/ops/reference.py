"""Eq. 5 of the paper written plainly: interpolate each synapse's input, weight it, sum.

Slow and obviously right; the tests hold every other path to it in float64.
"""

from __future__ import annotations

import math

import torch

from .geometry import output_size, position_set_of_channel
from .hat import hat
from .layout import grad_in_format_of, memory_format_of
from .validation import check_active_conv2d_args, pair


def _read(x: torch.Tensor, row: int, col: int, stride: tuple[int, int], out_hw: tuple[int, int]):
    """x[:, :, m*s + row, n*s + col] for every output pixel, 0 outside the image."""
    h, w = x.shape[-2:]
    rows = torch.arange(out_hw[0], device=x.device) * stride[0] + row
    cols = torch.arange(out_hw[1], device=x.device) * stride[1] + col
    row_ok = (rows >= 0) & (rows < h)
    col_ok = (cols >= 0) & (cols < w)
    picked = x.index_select(-2, rows.clamp(0, h - 1)).index_select(-1, cols.clamp(0, w - 1))
    mask = (row_ok[:, None] & col_ok[None, :]).to(x.dtype)
    return picked * mask


def _interpolate(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, stride, out_hw):
    """Bilinear read of x at (m*s + alpha, n*s + beta); taps one beyond the support carry the
    derivative rule at integer coordinates (their weight is 0, their slope is not)."""
    a0 = math.floor(alpha.item())
    b0 = math.floor(beta.item())
    out = 0
    for i in range(a0 - 1, a0 + 3):
        wi = hat(i - alpha)
        for j in range(b0 - 1, b0 + 3):
            out = out + wi * hat(j - beta) * _read(x, i, j, stride, out_hw)
    return out


def reference_active_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """The ACU by definition. ``positions`` is the full (P, K, 2) tensor (origin included).

    The output and the input gradient take the input's memory format.
    """
    check_active_conv2d_args(input, weight, positions, bias, groups)
    stride = pair(stride, "stride")
    memory_format = memory_format_of(input)
    input = grad_in_format_of(input)
    n, c_in, h, w = input.shape
    c_out, c_per_group, k = weight.shape
    out_hw = output_size((h, w), stride)
    sets = position_set_of_channel(c_out, positions.shape[0])
    out_per_group = c_out // groups
    positions = positions.to(input.dtype)
    cache: dict[tuple[int, int, int], torch.Tensor] = {}
    outputs = []
    for o in range(c_out):
        g, p = o // out_per_group, sets[o]
        x_g = input[:, g * c_per_group : (g + 1) * c_per_group]
        y = 0
        for s in range(k):
            key = (g, p, s)
            if key not in cache:
                alpha, beta = positions[p, s, 0], positions[p, s, 1]
                cache[key] = _interpolate(x_g, alpha, beta, stride, out_hw)
            y = y + (weight[o, :, s, None, None] * cache[key]).sum(1)
        if bias is not None:
            y = y + bias[o]
        outputs.append(y)
    return torch.stack(outputs, 1).contiguous(memory_format=memory_format)
