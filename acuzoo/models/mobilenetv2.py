"""MobileNetV2 (Sandler et al. 2018) with depthwise convs or depthwise ACUs (paper Table 8).

The ACU variant changes every depthwise conv of the inverted residual blocks into a depthwise
ACU (P = C), nothing else. Widths follow the original rounding (channels made divisible by 8;
the 1280-channel head conv scales only for widths above 1). The layout and parameter names
follow timm's ``mobilenetv2_100`` (conv_stem, bn1, blocks.i.j.{conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3}, conv_head, bn2, classifier) so its weights can be converted later.
"""

from typing import Any

import torch
from timm.layers import make_divisible
from timm.models import generate_default_cfgs, register_model
from timm.models._registry import register_model_deprecations  # not re-exported by timm.models
from torch import nn

from ._common import ZooNet, build_family_model, check_model_args, depthwise_conv
from ._pretrained import fmnist_cfg, imagenet_cfg

__all__ = ["MobileNetV2"]

# (expansion t, output channels c, repeats n, first stride s), the original's Table 2.
ARCH = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STAGE_ENDS = (0, 1, 2, 4, 6)  # feature taps at strides 2, 4, 8, 16, 32, as timm's
WIDTHS = {"080": 0.8, "100": 1.0, "120": 1.2, "140": 1.4}


class DepthwiseSeparable(nn.Module):
    """The t = 1 first block: depthwise 3x3 then a linear 1x1 projection."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, acu: bool, **dd: Any) -> None:
        super().__init__()
        self.conv_dw = depthwise_conv(in_chs, stride, acu, **dd)
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.has_skip = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """1x1 expansion, depthwise 3x3 (conv or ACU), linear 1x1 projection; a skip when shapes agree."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, acu: bool, **dd: Any) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * expansion)
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(mid_chs, **dd)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = depthwise_conv(mid_chs, stride, acu, **dd)
        self.bn2 = nn.BatchNorm2d(mid_chs, **dd)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)
        self.has_skip = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class MobileNetV2(ZooNet):
    """MobileNetV2 at width multiplier ``width``; ``acu=True`` makes its depthwise convs ACUs."""

    stem_pattern = r"^(?:conv_stem|bn1)\."
    neck_pattern = r"^(?:conv_head|bn2)\."

    def __init__(
        self,
        width: float = 1.0,
        acu: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_model_args(in_chans, num_classes, drop_rate)
        if not 0.0 < width <= 4.0:
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        dd = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.width = width
        self.acu = acu
        stem_chs = make_divisible(32 * width)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_chs, **dd)
        self.act1 = nn.ReLU6(inplace=True)

        stages, in_chs, reduction, self.feature_info = [], stem_chs, 2, []
        for index, (t, c, n, s) in enumerate(ARCH):
            out_chs = make_divisible(c * width)
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                if t == 1:
                    blocks.append(DepthwiseSeparable(in_chs, out_chs, stride, acu, **dd))
                else:
                    blocks.append(InvertedResidual(in_chs, out_chs, stride, t, acu, **dd))
                in_chs = out_chs
            reduction *= s
            stages.append(nn.Sequential(*blocks))
            if index in STAGE_ENDS:
                tap = {"num_chs": out_chs, "reduction": reduction, "module": f"blocks.{index}"}
                self.feature_info.append(tap)
        self.blocks = nn.Sequential(*stages)
        self.feature_ends = [end + 1 for end in STAGE_ENDS]

        head_chs = make_divisible(1280 * max(1.0, width))
        self.conv_head = nn.Conv2d(in_chs, head_chs, 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(head_chs, **dd)
        self.act2 = nn.ReLU6(inplace=True)
        self.init_head(head_chs, num_classes, global_pool, drop_rate, **dd)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv_stem(x)))

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv_head(x)))

    def prune_neck(self) -> None:
        self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    return build_family_model(MobileNetV2, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return imagenet_cfg("conv_stem", **kwargs)


_PUBLISHED = ("mobilenetv2_conv_100", "mobilenetv2_acu_100")  # checkpoints/manifest.json
default_cfgs = generate_default_cfgs(
    # Published checkpoints first; '*' keeps in1k the default tag (timm prefers one with weights).
    # Fashion-MNIST at 64 px: at 28 the last stages see 1x1 maps (checkpoints/configs/fmnist_mobilenetv2_*).
    {f"{n}.fmnist": _cfg(**fmnist_cfg(n, side=64), pool_size=(2, 2)) for n in _PUBLISHED}
    | {f"mobilenetv2_{kind}_{w}.in1k*": _cfg() for kind in ("acu", "conv") for w in WIDTHS}
)


def _mnv2(name: str, kind: str, w: str, pretrained: bool, kwargs: dict[str, Any]) -> MobileNetV2:
    return _create(name, pretrained, width=WIDTHS[w], acu=kind == "acu", **kwargs)


@register_model
def mobilenetv2_acu_080(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x0.8 with depthwise ACUs."""
    return _mnv2("mobilenetv2_acu_080", "acu", "080", pretrained, kwargs)


@register_model
def mobilenetv2_acu_100(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.0 with depthwise ACUs."""
    return _mnv2("mobilenetv2_acu_100", "acu", "100", pretrained, kwargs)


@register_model
def mobilenetv2_acu_120(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.2 with depthwise ACUs."""
    return _mnv2("mobilenetv2_acu_120", "acu", "120", pretrained, kwargs)


@register_model
def mobilenetv2_acu_140(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.4 with depthwise ACUs."""
    return _mnv2("mobilenetv2_acu_140", "acu", "140", pretrained, kwargs)


@register_model
def mobilenetv2_conv_080(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x0.8, the baseline with depthwise convs."""
    return _mnv2("mobilenetv2_conv_080", "conv", "080", pretrained, kwargs)


@register_model
def mobilenetv2_conv_100(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.0, the baseline with depthwise convs."""
    return _mnv2("mobilenetv2_conv_100", "conv", "100", pretrained, kwargs)


@register_model
def mobilenetv2_conv_120(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.2, the baseline with depthwise convs."""
    return _mnv2("mobilenetv2_conv_120", "conv", "120", pretrained, kwargs)


@register_model
def mobilenetv2_conv_140(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 x1.4, the baseline with depthwise convs."""
    return _mnv2("mobilenetv2_conv_140", "conv", "140", pretrained, kwargs)


# Short names, timm's way: an alias builds its target (architecture, tags and pretrained weights
# included) and is left out of timm.list_models, as timm's own renamed models are.
register_model_deprecations(__name__, {"mobilenetv2_acu": "mobilenetv2_acu_100"})
