"""Shapes shared by every operator path: output size, channel -> position-set maps, kernel boxes."""

from __future__ import annotations

import math

import torch


def output_size(hw: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Output size of the ACU: that of its initial odd kernel with 'same' padding."""
    return (hw[0] - 1) // stride[0] + 1, (hw[1] - 1) // stride[1] + 1


def position_set_of_channel(out_channels: int, position_sets: int) -> list[int]:
    """Output channel o uses position set o // (C_out // P)."""
    per_set = out_channels // position_sets
    return [o // per_set for o in range(out_channels)]


def column_units(in_channels: int, out_channels: int, groups: int, position_sets: int):
    """Split the channels into units that each read one input slice with one position set.

    With U = lcm(groups, P) units, unit u covers output channels [u*C_out/U, (u+1)*C_out/U),
    which share one conv group and one position set. Returns U and, per unit, the position
    set and the input-channel slice; adjacent units that read adjacent input channels with
    the same set are merged into one segment, so the shared ACU (P = 1) is a single segment.
    """
    units = math.lcm(groups, position_sets)
    c_per_group = in_channels // groups
    segments: list[list[int]] = []  # [set, in_start, in_stop]
    for u in range(units):
        p = u // (units // position_sets)
        g = u // (units // groups)
        start, stop = g * c_per_group, (g + 1) * c_per_group
        if segments and segments[-1][0] == p and segments[-1][2] == start:
            segments[-1][2] = stop
        else:
            segments.append([p, start, stop])
    return units, [tuple(s) for s in segments]


def kernel_radius(coords: torch.Tensor) -> tuple[int, int]:
    """Radii (tight, extended) of the symmetric integer box for one axis of the positions.

    Tight: every tap with non-zero bilinear weight, |i| <= ceil(max |a|). Extended: one more
    when a synapse sits on an integer at the tight border, since the central-difference
    slope there reads the tap beyond it.
    """
    values = coords.detach().reshape(-1).double().cpu()
    tight = int(math.ceil(values.abs().max().item())) if values.numel() else 0
    on_border = (values.abs() == tight) & (values == values.round())
    return tight, tight + int(bool(on_border.any()))
