"""GoogLeNet with BN (paper Table 6, section 5.1.1) and its ACU replacement.

``inception_bn_conv``: GoogLeNet (Szegedy et al. 2015) with a BN before every ReLU, true 5x5
branches, no LRN and no auxiliary classifiers (they only help training and are not part of
the network that is counted or evaluated): 7.0M parameters.

``inception_bn_acu``: every Inception module becomes a (1x1 conv)-(3x3 depthwise ACU) block
(Fig. 6(d)): 1x1 conv, BN, ReLU, depthwise ACU, BN, ReLU, no residual. A block retaining the
module's output width has fewer parameters than the module, so, as the paper does, the blocks
are widened by 1.4: a block's width is its module's output width x 1.4 rounded to a multiple of
8, and the next block reads that width; the last block (5b) keeps GoogLeNet's 1024, the width
the classifier reads. The stem and the pools between the stages are GoogLeNet's.

Why this layout: it gives 7.14M parameters and 1.475G MAdds against the paper's 7.1M and 1.47G.
Widening every block, the last included, gives 8.04M / 1.50G; no uniform factor fits both
figures (x1.3: 7.03M but 1.36G); a residual around the block changes neither count, and a 1x1
conv to the module's width x 1.4 is the only way the depthwise ACU can widen the module.
"""

from typing import Any

import torch
from timm.layers import make_divisible
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._common import ZooNet, build_family_model, check_model_args, depthwise_conv
from ._pretrained import imagenet_cfg

__all__ = ["InceptionBN"]

# name: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), GoogLeNet's Table 1.
MODULES = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}
STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))
ACU_WIDEN = 1.4


def module_width(name: str, acu: bool = False) -> int:
    """The output width of module ``name``, or of the ACU block that replaces it."""
    _, c1, _, c3, _, c5, cp = MODULES[name]
    width = c1 + c3 + c5 + cp
    if not acu or name == STAGES[-1][-1]:
        return width
    return make_divisible(width * ACU_WIDEN)


class ConvBnReLU(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, **dd: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU(inplace=True)


class Inception(nn.Module):
    """GoogLeNet's module: 1x1 | 1x1-3x3 | 1x1-5x5 | maxpool-1x1, concatenated."""

    def __init__(self, in_chs: int, c1: int, r3: int, c3: int, r5: int, c5: int, cp: int, **dd: Any) -> None:
        super().__init__()
        self.branch1 = ConvBnReLU(in_chs, c1, 1, **dd)
        self.branch3 = nn.Sequential(ConvBnReLU(in_chs, r3, 1, **dd), ConvBnReLU(r3, c3, 3, **dd))
        self.branch5 = nn.Sequential(ConvBnReLU(in_chs, r5, 1, **dd), ConvBnReLU(r5, c5, 5, **dd))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBnReLU(in_chs, cp, 1, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class AcuBlock(nn.Sequential):
    """Fig. 6(d): a 1x1 conv to ``width``, then a 3x3 depthwise ACU that learns each channel's
    receptive field (the Inception module's several kernel sizes, learned)."""

    def __init__(self, in_chs: int, width: int, **dd: Any) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(in_chs, width, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(width, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_dw = depthwise_conv(width, 1, True, **dd)
        self.bn2 = nn.BatchNorm2d(width, **dd)
        self.act2 = nn.ReLU(inplace=True)


def _pool(kernel_size: int = 3) -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size, 2, ceil_mode=True)


class InceptionBN(ZooNet):
    """GoogLeNet+BN; ``acu=True`` replaces every Inception module by a widened ``AcuBlock``."""

    stem_pattern = r"^blocks\.[01]\."

    def __init__(
        self,
        acu: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.4,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_model_args(in_chans, num_classes, drop_rate)
        dd = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.acu = acu
        stages = [
            nn.Sequential(ConvBnReLU(in_chans, 64, 7, 2, **dd)),
            nn.Sequential(_pool(), ConvBnReLU(64, 64, 1, **dd), ConvBnReLU(64, 192, 3, **dd)),
        ]
        in_chs = 192
        for pool_size, names in zip((3, 3, 2), STAGES):
            layers: list[nn.Module] = [_pool(pool_size)]
            for name in names:
                width = module_width(name, acu)
                if acu:
                    layers.append(AcuBlock(in_chs, width, **dd))
                else:
                    layers.append(Inception(*MODULES[name], **dd))
                in_chs = width
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        self.feature_ends = [1, 2, 3, 4, 5]  # after each stage
        chs = [64, 192] + [module_width(names[-1], acu) for names in STAGES]
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"} for i, c in enumerate(chs)
        ]
        self.init_head(in_chs, num_classes, global_pool, drop_rate, **dd)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> InceptionBN:
    return build_family_model(InceptionBN, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return imagenet_cfg("blocks.0.0.conv", **kwargs)


default_cfgs = generate_default_cfgs({"inception_bn_conv.in1k": _cfg(), "inception_bn_acu.in1k": _cfg()})


@register_model
def inception_bn_conv(pretrained: bool = False, **kwargs: Any) -> InceptionBN:
    """GoogLeNet with BN before every ReLU and true 5x5 branches (the paper's base network)."""
    return _create("inception_bn_conv", pretrained, acu=False, **kwargs)


@register_model
def inception_bn_acu(pretrained: bool = False, **kwargs: Any) -> InceptionBN:
    """Every Inception module replaced by a (1x1 conv)-(3x3 depthwise ACU) block, widened 1.4x."""
    return _create("inception_bn_acu", pretrained, acu=True, **kwargs)
