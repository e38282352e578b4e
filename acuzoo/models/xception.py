"""Xception (Chollet 2017) with depthwise convs or depthwise ACUs (paper Table 7, section 5.1.2).

The ACU variant treats each residual block as one Inception module and changes only the last
depthwise conv of each block (the depthwise half of its last separable conv) into a depthwise
ACU: 12 ACUs. The entry/exit-flow layers outside the blocks keep plain depthwise convs.

Layout: ``blocks.0`` is the entry stem (conv1, bn1, act1, conv2, bn2, act2, unpadded 3x3 convs
as in the original), ``blocks.1``-``blocks.12`` are the residual blocks (``skip``, ``skipbn``,
``rep`` with SeparableConv2d(conv1 = depthwise, pointwise) / BN / ReLU / max-pool in the
original order), ``blocks.13`` the exit convs (conv3, bn3, act3, conv4, bn4, act4). The conv/BN
layout is timm's ``legacy_xception``'s, one block deeper in the names, so its weights convert.
"""

from collections import OrderedDict
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._common import ZooNet, build_family_model, check_model_args, depthwise_conv
from ._pretrained import imagenet_cfg

__all__ = ["Xception"]

# (in, out, separable convs, stride, starts with ReLU, grows in the first conv): Chollet's Fig. 5.
BLOCKS = (
    ((64, 128, 2, 2, False, True), (128, 256, 2, 2, True, True), (256, 728, 2, 2, True, True))
    + ((728, 728, 3, 1, True, True),) * 8
    + ((728, 1024, 2, 2, True, False),)
)
STAGE_ENDS = (0, 1, 2, 11, 13)  # taps at strides 2, 4, 8, 16, 32


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (conv or ACU) then pointwise 1x1, no BN between (as Chollet's)."""

    def __init__(self, in_chs: int, out_chs: int, acu: bool = False, **dd: Any) -> None:
        super().__init__()
        self.conv1 = depthwise_conv(in_chs, 1, acu, **dd)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """A residual block of separable convs; with ``acu`` its last depthwise conv is an ACU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        reps: int,
        stride: int,
        start_relu: bool,
        grow_first: bool,
        acu: bool,
        **dd: Any,
    ) -> None:
        super().__init__()
        if out_chs != in_chs or stride != 1:
            self.skip = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False, **dd)
            self.skipbn = nn.BatchNorm2d(out_chs, **dd)
        else:
            self.skip, self.skipbn = None, None
        widths = [in_chs] + [out_chs if grow_first else in_chs] * (reps - 1) + [out_chs]
        layers: list[nn.Module] = []
        for i in range(reps):
            # The first ReLU must not overwrite x: the skip path still reads it.
            layers.append(nn.ReLU(inplace=i > 0))
            layers.append(SeparableConv2d(widths[i], widths[i + 1], acu and i == reps - 1, **dd))
            layers.append(nn.BatchNorm2d(widths[i + 1], **dd))
        if not start_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rep(x)
        skip = x if self.skip is None or self.skipbn is None else self.skipbn(self.skip(x))
        return y + skip


def _conv_bn_relu(name: int, conv: nn.Module, chs: int, **dd: Any) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{name}", conv),
        (f"bn{name}", nn.BatchNorm2d(chs, **dd)),
        (f"act{name}", nn.ReLU(inplace=True)),
    ]


class Xception(ZooNet):
    """Xception; ``acu=True`` makes the last depthwise conv of each residual block an ACU."""

    stem_pattern = r"^blocks\.0\."

    def __init__(
        self,
        acu: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_model_args(in_chans, num_classes, drop_rate)
        dd = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.acu = acu
        stem = _conv_bn_relu(1, nn.Conv2d(in_chans, 32, 3, 2, 0, bias=False, **dd), 32, **dd)
        stem += _conv_bn_relu(2, nn.Conv2d(32, 64, 3, bias=False, **dd), 64, **dd)
        exit_flow = _conv_bn_relu(3, SeparableConv2d(1024, 1536, **dd), 1536, **dd)
        exit_flow += _conv_bn_relu(4, SeparableConv2d(1536, 2048, **dd), 2048, **dd)
        blocks = (Block(*spec, acu, **dd) for spec in BLOCKS)
        self.blocks = nn.Sequential(nn.Sequential(OrderedDict(stem)), *blocks, nn.Sequential(OrderedDict(exit_flow)))
        self.feature_ends = [end + 1 for end in STAGE_ENDS]
        chs = (64, 128, 256, 728, 2048)
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"blocks.{b}"}
            for i, (c, b) in enumerate(zip(chs, STAGE_ENDS))
        ]
        self.init_head(2048, num_classes, global_pool, drop_rate, **dd)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> Xception:
    return build_family_model(Xception, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # At 224, the paper's crop, Xception costs the paper's 4.6G MAdds (8.4G at Chollet's 299).
    return imagenet_cfg("blocks.0.conv1", **kwargs)


default_cfgs = generate_default_cfgs({"xception_conv.in1k": _cfg(), "xception_acu.in1k": _cfg()})


@register_model
def xception_conv(pretrained: bool = False, **kwargs: Any) -> Xception:
    """Chollet's Xception, the baseline with depthwise convs."""
    return _create("xception_conv", pretrained, acu=False, **kwargs)


@register_model
def xception_acu(pretrained: bool = False, **kwargs: Any) -> Xception:
    """Xception with the last depthwise conv of each residual block a depthwise ACU."""
    return _create("xception_acu", pretrained, acu=True, **kwargs)
