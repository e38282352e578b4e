"""Multiply-add (MAdds) counter with the paper's convention for the ACU's interpolation cost.

Counted, per image: every conv (``C_in / groups * kh * kw`` per output element), every
``nn.Linear`` (``in * out``), every ACU (its K synapses like a conv's taps, plus its
interpolation). BN, activations, pooling and residual additions are not counted, as in the
MobileNet papers the ACU paper compares with.

Interpolation convention, derived from Table 8. A synapse off the integer grid reads its input
by bilinear interpolation from 4 neighbours: 4 multiply-adds instead of the 1 of a fixed tap, so
3 extra per synapse. The origin synapse never moves and needs none. An ACU therefore costs

    3 * (K - 1) * H_out * W_out * C_in * max(1, P / groups)

extra MAdds: each input channel is interpolated once per position set that reads it (once for
P <= groups, the depthwise ACU included). For the depthwise 3x3 ACUs of MobileNetV2 this is 24
MAdds per depthwise output element, 55.2M at x1.0 and 78.9M at x1.4 against the paper's 55M and
77M (tests/models/test_imagenet_paper_parity.py says where the other widths differ and why).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .nn import ActiveConv2d, fuse_acu

INTERPOLATION_MADDS_PER_SYNAPSE = 3


def acu_interpolation_madds(layer: ActiveConv2d, out_hw: int) -> int:
    """The interpolation MAdds of ``layer`` for one image with ``out_hw`` output pixels."""
    sets_per_input = max(1, layer.position_groups // layer.groups)
    movable = layer.num_synapses - 1
    return INTERPOLATION_MADDS_PER_SYNAPSE * movable * out_hw * layer.in_channels * sets_per_input


def layer_madds(module: nn.Module, output: torch.Tensor) -> int:
    """MAdds of one layer for one image of the batch that produced ``output`` (0 if uncounted)."""
    if isinstance(module, nn.Linear):
        rows_per_image = output.numel() // output.shape[-1] // output.shape[0]
        return module.in_features * module.out_features * rows_per_image
    if not isinstance(module, (nn.Conv2d, ActiveConv2d)):
        return 0
    per_image = output[0].numel()
    out_hw = output.shape[-2] * output.shape[-1]
    fan_in = module.in_channels // module.groups
    if isinstance(module, ActiveConv2d):
        return per_image * fan_in * module.num_synapses + acu_interpolation_madds(module, out_hw)
    return per_image * fan_in * module.kernel_size[0] * module.kernel_size[1]


def madds_by_layer(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """MAdds of every counted layer of ``model`` for one (C, H, W) input, by module name.

    Only shapes matter, so the count runs on a meta-device copy in which every ACU is fused to
    its equal conv (same output shape); the ACUs are then counted by their own rule.
    """
    acus = {name: m for name, m in model.named_modules() if isinstance(m, ActiveConv2d)}
    shadow = fuse_acu(copy.deepcopy(model)).to("meta").eval()
    counts: dict[str, int] = {}
    for name, module in shadow.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def hook(mod: nn.Module, _: tuple, out: torch.Tensor, name: str = name) -> None:
                counts[name] = counts.get(name, 0) + layer_madds(acus.get(name, mod), out)

            module.register_forward_hook(hook)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        shadow(torch.zeros(1, *input_size, device="meta", dtype=dtype))
    return counts


def count_madds(model: nn.Module, input_size: Sequence[int]) -> int:
    """Total MAdds of ``model`` for one image of ``input_size`` = (C, H, W)."""
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    return sum(madds_by_layer(model, input_size).values())


def count_params(model: nn.Module) -> int:
    """All parameters, ACU positions included (the paper counts them: eq. 7)."""
    return sum(p.numel() for p in model.parameters())
