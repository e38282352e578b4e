"""Bilinear-columns path: for few position sets with a wide spread. Each synapse's input is
a constant sub-pixel shift of the input, i.e. a weighted sum of at most four integer
shifts; stacking them gives an im2col-like buffer that one batched GEMM per unit
contracts. Its cost does not grow with the spread (the dense kernel's does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .geometry import column_units
from .layout import memory_format_of


def _taps(a: float) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Value taps (index, hat weight) and slope taps (index, d/da of the hat weight)."""
    base = math.floor(a)
    frac = a - base
    if frac == 0.0:
        # Central rule at an integer: the slope reads both neighbours, half each.
        return [(base, 1.0)], [(base - 1, -0.5), (base + 1, 0.5)]
    return [(base, 1.0 - frac), (base + 1, frac)], [(base, -1.0), (base + 1, 1.0)]


@dataclass(frozen=True)
class _Window:
    """Strided views of a padded tensor: the input each output pixel reads at offset (i, j).

    The padding need not reach a far synapse: with ``pad >= max(H, W)``, every offset beyond
    ``pad`` reads only zeros, and so does the offset ``+-pad`` it is clamped to. The padded
    input then stays within 3x the image per axis, whatever the spread.
    """

    pad: int
    stride: tuple[int, int]
    out_hw: tuple[int, int]

    @classmethod
    def reaching(cls, reach: float, hw: tuple[int, int], stride, out_hw) -> _Window:
        """The window for taps up to ``ceil(reach) + 1`` away (slope taps included)."""
        return cls(min(int(math.ceil(reach)) + 1, max(hw)), stride, out_hw)

    def __call__(self, t: torch.Tensor, c0: int, c1: int, i: int, j: int) -> torch.Tensor:
        (ho, wo), (sh, sw) = self.out_hw, self.stride
        i, j = max(-self.pad, min(self.pad, i)), max(-self.pad, min(self.pad, j))
        r0, q0 = self.pad + i, self.pad + j
        return t[:, c0:c1, r0 : r0 + (ho - 1) * sh + 1 : sh, q0 : q0 + (wo - 1) * sw + 1 : sw]


def _interpolate_into(dst, xp, window: _Window, c0, c1, rows, cols) -> None:
    """dst = bilinear read at one synapse: a copy on integers, else lerps (columns, then rows)."""
    if len(rows) == 1 and len(cols) == 1:
        dst.copy_(window(xp, c0, c1, rows[0][0], cols[0][0]))
        return
    if len(rows) == 1:
        i, ((j, _), (_, wj)) = rows[0][0], cols
        torch.lerp(window(xp, c0, c1, i, j), window(xp, c0, c1, i, j + 1), wj, out=dst)
        return
    (i, _), (_, wi) = rows
    if len(cols) == 1:
        j = cols[0][0]
        torch.lerp(window(xp, c0, c1, i, j), window(xp, c0, c1, i + 1, j), wi, out=dst)
        return
    (j, _), (_, wj) = cols
    top = torch.lerp(window(xp, c0, c1, i, j), window(xp, c0, c1, i, j + 1), wj)
    bottom = torch.lerp(window(xp, c0, c1, i + 1, j), window(xp, c0, c1, i + 1, j + 1), wj)
    torch.lerp(top, bottom, wi, out=dst)


def _position_slopes(grad, xp, window: _Window, c0, c1, alpha: float, beta: float) -> tuple[float, float]:
    """(dL/d alpha, dL/d beta) of one synapse from its column gradient."""
    rows, row_slope = _taps(alpha)
    cols, col_slope = _taps(beta)
    dots: dict[tuple[int, int], float] = {}

    def dot(i: int, j: int) -> float:
        if (i, j) not in dots:
            dots[(i, j)] = float((grad * window(xp, c0, c1, i, j)).sum())
        return dots[(i, j)]

    d_alpha = sum(di * wj * dot(i, j) for i, di in row_slope for j, wj in cols)
    d_beta = sum(wi * dj * dot(i, j) for i, wi in rows for j, dj in col_slope)
    return d_alpha, d_beta


class _BilinearColumns(torch.autograd.Function):
    @staticmethod
    def geometry(x, positions, stride, out_hw):
        """(the positions as floats, the padded window every read stays inside)."""
        coords = positions.detach().double().cpu().tolist()
        reach = max((abs(v) for pset in coords for syn in pset for v in syn), default=0.0)
        return coords, _Window.reaching(reach, tuple(x.shape[-2:]), stride, out_hw)

    @staticmethod
    def forward(x, positions, segments, stride, out_hw):
        n = x.shape[0]
        k = positions.shape[1]
        coords, window = _BilinearColumns.geometry(x, positions, stride, out_hw)
        xp = F.pad(x, (window.pad,) * 4)
        widths = [stop - start for _, start, stop in segments]
        cols = x.new_empty((n, sum(widths), k, *out_hw))
        offset = 0
        for (p, c0, c1), width in zip(segments, widths):
            for s in range(k):
                rows, _ = _taps(coords[p][s][0])
                cols_, _ = _taps(coords[p][s][1])
                _interpolate_into(cols[:, offset : offset + width, s], xp, window, c0, c1, rows, cols_)
            offset += width
        return cols

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        # Apart from forward, as torch.func transforms (vjp) need: the geometry is read again.
        x, positions, segments, stride, out_hw = inputs
        coords, window = _BilinearColumns.geometry(x, positions, stride, out_hw)
        widths = [stop - start for _, start, stop in segments]
        ctx.save_for_backward(x)
        ctx.conf = (coords, segments, widths, window, tuple(x.shape[-2:]), positions.dtype, memory_format_of(x))

    @staticmethod
    def backward(ctx, grad_cols):
        (x,) = ctx.saved_tensors
        coords, segments, widths, window, (h, w), pos_dtype, memory_format = ctx.conf
        xp = F.pad(x, (window.pad,) * 4)
        need_x, need_pos = ctx.needs_input_grad[:2]
        k = len(coords[0])
        grad_xp = torch.zeros_like(xp) if need_x else None
        grad_pos = torch.zeros(len(coords), k, 2, dtype=torch.float64) if need_pos else None
        offset = 0
        for (p, c0, c1), width in zip(segments, widths):
            for s in range(k):
                g = grad_cols[:, offset : offset + width, s]
                alpha, beta = coords[p][s]
                if need_x:
                    rows, _ = _taps(alpha)
                    cols, _ = _taps(beta)
                    for i, wi in rows:
                        for j, wj in cols:
                            window(grad_xp, c0, c1, i, j).add_(g, alpha=wi * wj)
                if need_pos:
                    d_alpha, d_beta = _position_slopes(g, xp, window, c0, c1, alpha, beta)
                    grad_pos[p, s, 0] += d_alpha
                    grad_pos[p, s, 1] += d_beta
            offset += width
        grad_x = None
        if need_x:
            pad = window.pad
            grad_x = grad_xp[:, :, pad : pad + h, pad : pad + w].contiguous(memory_format=memory_format)
        if need_pos:
            grad_pos = grad_pos.to(device=grad_cols.device, dtype=pos_dtype)
        return grad_x, grad_pos, None, None, None


def columns_active_conv2d(x, weight, positions, bias, stride, groups, out_hw) -> torch.Tensor:
    """ACU as bilinear columns + one batched GEMM per unit (arguments already checked).

    The output and the input gradient take the input's memory format.
    """
    c_out, c_per_group, k = weight.shape
    units, segments = column_units(x.shape[1], c_out, groups, positions.shape[0])
    cols = _BilinearColumns.apply(x, positions, segments, stride, out_hw)
    n, (ho, wo) = x.shape[0], out_hw
    # (C_out/U, C_in/groups*K) @ (C_in/groups*K, Ho*Wo) for every unit and image.
    cols = cols.reshape(n, units, c_per_group * k, ho * wo)
    w = weight.to(x.dtype).reshape(units, c_out // units, c_per_group * k)
    out = torch.matmul(w, cols).reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.to(x.dtype).view(1, -1, 1, 1)
    return out.contiguous(memory_format=memory_format_of(x))
