"""An independent implementation agrees: torchvision's deform_conv2d with constant offsets
(the ACU's displacement from the 3x3 grid, one offset group per position set) is the ACU."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from acuzoo.nn.active_conv import grid_positions
from acuzoo.ops import active_conv2d


@pytest.mark.parametrize("channels, groups, sets, stride", [(8, 8, 8, 2), (6, 1, 1, 1), (8, 4, 2, 1)])
def test_deform_conv2d_with_constant_offsets_equals_the_acu(channels, groups, sets, stride):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 9, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(channels, channels // groups, 9, generator=gen, dtype=torch.float64)
    positions = (torch.rand(sets, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 2.5
    ours = active_conv2d(x, weight, positions, None, stride, groups)
    offsets = (positions - grid_positions((3, 3), (1, 1)).double()).reshape(1, -1, 1, 1)
    offsets = offsets.expand(2, -1, *ours.shape[-2:]).contiguous()
    theirs = deform_conv2d(x, offsets, weight.reshape(channels, -1, 3, 3), None, stride, 1)
    assert (theirs - ours).abs().max() < 1e-12
