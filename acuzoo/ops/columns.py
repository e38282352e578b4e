"""Bilinear-columns path: for few position sets (the shared ACU, P = 1, and small grouped
ACUs). Each synapse's input is a constant sub-pixel shift of the input, i.e. a weighted
sum of at most four integer shifts; stacking them gives an im2col-like buffer that one
1x1 (grouped) convolution contracts. Its cost does not grow with the spread.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .geometry import column_units


def _taps(a: float) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Value taps (index, hat weight) and slope taps (index, d/da of the hat weight)."""
    base = math.floor(a)
    frac = a - base
    if frac == 0.0:
        # Central rule at an integer: the slope reads both neighbours, half each.
        return [(base, 1.0)], [(base - 1, -0.5), (base + 1, 0.5)]
    return [(base, 1.0 - frac), (base + 1, frac)], [(base, -1.0), (base + 1, 1.0)]


class _BilinearColumns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, segments, stride, out_hw):
        n, _, h, w = x.shape
        ho, wo = out_hw
        sh, sw = stride
        k = positions.shape[1]
        coords = positions.detach().double().cpu().tolist()
        reach = max((abs(v) for pset in coords for syn in pset for v in syn), default=0.0)
        pad = int(math.ceil(reach)) + 1
        xp = F.pad(x, (pad, pad, pad, pad))
        widths = [stop - start for _, start, stop in segments]
        cols = x.new_empty((n, sum(widths), k, ho, wo))

        def window(t, c0, c1, i, j):
            r0, q0 = pad + i, pad + j
            return t[:, c0:c1, r0 : r0 + (ho - 1) * sh + 1 : sh, q0 : q0 + (wo - 1) * sw + 1 : sw]

        offset = 0
        for (p, c0, c1), width in zip(segments, widths):
            for s in range(k):
                rows, _ = _taps(coords[p][s][0])
                cols_, _ = _taps(coords[p][s][1])
                dst = cols[:, offset : offset + width, s]
                first = True
                for i, wi in rows:
                    for j, wj in cols_:
                        src = window(xp, c0, c1, i, j)
                        if first:
                            torch.mul(src, wi * wj, out=dst) if wi * wj != 1.0 else dst.copy_(src)
                            first = False
                        else:
                            dst.add_(src, alpha=wi * wj)
            offset += width
        ctx.save_for_backward(xp)
        ctx.conf = (coords, segments, widths, pad, stride, out_hw, (h, w), positions.dtype)
        ctx.window = window
        return cols

    @staticmethod
    def backward(ctx, grad_cols):
        (xp,) = ctx.saved_tensors
        coords, segments, widths, pad, stride, out_hw, (h, w), pos_dtype = ctx.conf
        window = ctx.window
        need_x, need_pos = ctx.needs_input_grad[:2]
        k = len(coords[0])
        grad_xp = torch.zeros_like(xp) if need_x else None
        grad_pos = torch.zeros(len(coords), k, 2, dtype=torch.float64) if need_pos else None
        offset = 0
        for (p, c0, c1), width in zip(segments, widths):
            for s in range(k):
                g = grad_cols[:, offset : offset + width, s]
                rows, row_slope = _taps(coords[p][s][0])
                cols_, col_slope = _taps(coords[p][s][1])
                if need_x:
                    for i, wi in rows:
                        for j, wj in cols_:
                            window(grad_xp, c0, c1, i, j).add_(g, alpha=wi * wj)
                if need_pos:
                    # d/d alpha: slope taps along rows, value taps along columns; and vice versa.
                    dots: dict[tuple[int, int], float] = {}

                    def dot(i, j, g=g, c0=c0, c1=c1):
                        if (i, j) not in dots:
                            dots[(i, j)] = float((g * window(xp, c0, c1, i, j)).sum())
                        return dots[(i, j)]

                    grad_pos[p, s, 0] += sum(di * wj * dot(i, j) for i, di in row_slope for j, wj in cols_)
                    grad_pos[p, s, 1] += sum(wi * dj * dot(i, j) for i, wi in rows for j, dj in col_slope)
            offset += width
        grad_x = None
        if need_x:
            grad_x = grad_xp[:, :, pad : pad + h, pad : pad + w]
        if need_pos:
            grad_pos = grad_pos.to(device=grad_cols.device, dtype=pos_dtype)
        return grad_x, grad_pos, None, None, None


def columns_active_conv2d(x, weight, positions, bias, stride, groups, out_hw) -> torch.Tensor:
    """ACU as bilinear columns + one grouped 1x1 conv (arguments already checked)."""
    c_out, c_per_group, k = weight.shape
    units, segments = column_units(x.shape[1], c_out, groups, positions.shape[0])
    cols = _BilinearColumns.apply(x, positions, segments, stride, out_hw)
    n = x.shape[0]
    cols = cols.reshape(n, -1, out_hw[0], out_hw[1])
    w = weight.to(x.dtype).reshape(c_out, c_per_group * k, 1, 1)
    return F.conv2d(cols, w, None if bias is None else bias.to(x.dtype), 1, 0, 1, units)
