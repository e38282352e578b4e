"""CIFAR ResNet-29: the pre-activation bottleneck ResNet of the ACU paper (Table 10, Appendix B).

Jeon & Kim, "Integrating Multiple Receptive Fields through Grouped Active Convolution":
stem 3x3 conv 64, three stages of three bottleneck blocks whose widths double per stage,
stride 2 in the spatial conv of the first block of stages 2 and 3, a 1x1 projection
shortcut where the shape changes, a final BN-ReLU, global average pooling and a 10-way fc.

One class builds every row of Tables 1, 2, 3 and 5: the block's spatial conv is an ordinary
conv (3x3, 5x5, 7x7, dilated) or an ACU, grouped or not, with one shared position set
(P = 1) or one per conv group (P = groups). The ResNeXt of Table 9 (``cifar_resnext.py``) is
the same network, wider and grouped.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import BatchNormAct2d, ClassifierHead
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..nn import ActiveConv2d
from ._common import build_family_model, check_model_args
from ._pretrained import fmnist_cfg, zoo_cfg
from ._zoo_api import ZooModel

__all__ = ["CifarResNet", "PreActBottleneck", "create_spatial_conv"]

CONV_TYPES = ("conv", "acu")


def create_spatial_conv(
    in_chs: int,
    out_chs: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    conv_type: str = "conv",
    position_groups: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A block's spatial conv: an ordinary conv with 'same' padding, or the ACU that starts
    as exactly that conv. ``position_groups`` (P) applies to the ACU only; None = groups."""
    dd = {"device": device, "dtype": dtype}
    if conv_type == "acu":
        return ActiveConv2d(
            in_chs, out_chs, kernel_size, stride, groups, position_groups, bias=False, dilation=dilation, **dd
        )
    if conv_type != "conv":
        raise ValueError(f"conv_type must be one of {CONV_TYPES}, got {conv_type!r}")
    if position_groups is not None:
        raise ValueError("position_groups applies to conv_type='acu' only")
    padding = dilation * (kernel_size // 2)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=False, **dd)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016): (BN-ReLU-conv) x 3, 1x1 / spatial / 1x1.

    The projection shortcut reads the pre-activated input, as in the pre-activation paper.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        spatial_layer: Callable[..., nn.Module] = create_spatial_conv,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = BatchNormAct2d(in_chs, **dd)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.norm2 = BatchNormAct2d(mid_chs, **dd)
        self.conv2 = spatial_layer(mid_chs, mid_chs, stride=stride, groups=groups, dilation=dilation, **dd)
        self.norm3 = BatchNormAct2d(mid_chs, **dd)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd)
        needs_projection = stride != 1 or in_chs != out_chs
        self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False, **dd) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x + shortcut


class CifarResNet(ZooModel):
    """Bottleneck ResNet for 32x32 inputs, with ordinary or active spatial convs.

    Args:
        depths: blocks per stage.
        widths: block output channels per stage.
        bottleneck_widths: channels of the spatial conv per stage.
        groups: conv groups (cardinality) of the spatial conv per stage.
        dilations: dilation of the spatial conv per stage.
        conv_type: 'conv' or 'acu' for the spatial convs.
        kernel_size: spatial kernel (the ACU's initial grid).
        position_groups: the ACU's position sets P; None = one per conv group, 1 = shared.
        stem_width: output channels of the 3x3 stem conv.
        num_classes: classifier outputs; 0 gives pooled features.
        in_chans: input channels.
        global_pool: timm pooling type ('' keeps the feature map).
        drop_rate: dropout before the classifier.
    """

    trunk_name = "stages"
    stem_pattern = r"^stem\."
    neck_pattern = r"^norm\."
    neck_is_norm = True  # the final BN-ReLU

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (128, 256, 512),
        bottleneck_widths: Sequence[int] = (32, 64, 128),
        groups: Sequence[int] = (1, 1, 1),
        dilations: Sequence[int] = (1, 1, 1),
        conv_type: str = "conv",
        kernel_size: int = 3,
        position_groups: int | None = None,
        stem_width: int = 64,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_model_args(in_chans, num_classes, drop_rate)  # the zoo's common ranges
        stage_args = (depths, widths, bottleneck_widths, groups, dilations)
        if len({len(a) for a in stage_args}) != 1:
            raise ValueError("depths, widths, bottleneck_widths, groups and dilations need one entry per stage")
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {CONV_TYPES}, got {conv_type!r}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        # Pre-activation: the first block's BN-ReLU follows the stem conv.
        self.stem = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="stem")]
        spatial_layer = partial(
            create_spatial_conv, kernel_size=kernel_size, conv_type=conv_type, position_groups=position_groups
        )
        prev_chs, reduction = stem_width, 1
        stages = []
        for i, (depth, out_chs, mid_chs, g, dilation) in enumerate(zip(*stage_args)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(
                    PreActBottleneck(
                        prev_chs,
                        out_chs,
                        mid_chs,
                        stride=stride if j == 0 else 1,
                        groups=g,
                        dilation=dilation,
                        spatial_layer=spatial_layer,
                        **dd,
                    )
                )
                prev_chs = out_chs
            reduction *= stride
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_ends = list(range(len(stages) + 1))  # the stem, then each stage
        self.num_features = prev_chs
        self.norm = BatchNormAct2d(prev_chs, **dd)  # the last block leaves its output un-normalized
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """He (MSRA) init for conv and ACU weights, as in Appendix B; ACU positions stay on the grid."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, ActiveConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def prune_neck(self) -> None:
        self.norm = nn.Identity()  # sized for, and applied to, the last stage only

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_head(
        self, num_classes: int, global_pool: str | None, device: torch.device | None, dtype: torch.dtype | None
    ) -> None:
        self.head.reset(num_classes, global_pool, in_features=self.num_features, device=device, dtype=dtype)
        self.head_hidden_size = self.head.num_features


def create_cifar_model(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Build a registered CIFAR variant through timm (pretrained cfg, features_only, ...)."""
    # Four feature taps (the stem and three stages) instead of timm's default five.
    return build_family_model(CifarResNet, variant, pretrained, num_taps=4, **kwargs)


def cifar_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg of a CIFAR-10 model (no weights published yet)."""
    family = dict(
        url=url,
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        first_conv="stem",
        classifier="head.fc",
    )
    return zoo_cfg(**{**family, **kwargs})  # a tag's own fields win


def _resnet29(**kwargs: Any) -> dict[str, Any]:
    # Table 10: 1x1 32 / 3x3 32 / 1x1 128, widths doubling per stage.
    return dict(depths=(3, 3, 3), widths=(128, 256, 512), bottleneck_widths=(32, 64, 128), **kwargs)


def _resnet29_grouped(group_width: int | None = None, cardinality: int | None = None, **kwargs: Any):
    # Section 4.2: 1x1 64 / 3x3 64 / 1x1 128 in stage 1. 16x4d keeps the cardinality over the
    # stages; x4d / x2d / x1d keep the channels per group, so the cardinality doubles instead.
    mids = (64, 128, 256)
    groups = (cardinality,) * 3 if cardinality else tuple(m // group_width for m in mids)
    return dict(depths=(3, 3, 3), widths=(128, 256, 512), bottleneck_widths=mids, groups=groups, **kwargs)


_GRID = {
    "16x4d": dict(cardinality=16),
    "x4d": dict(group_width=4),
    "x2d": dict(group_width=2),
    "x1d": dict(group_width=1),
}
_GRID_CONVS = {"conv3": dict(), "conv5": dict(kernel_size=5), "acu": dict(conv_type="acu")}

model_cfgs: dict[str, dict[str, Any]] = {
    # Table 1 / 2
    "cifar_resnet29_conv3": _resnet29(),
    "cifar_resnet29_acu": _resnet29(conv_type="acu", position_groups=1),
    "cifar_resnet29_conv7": _resnet29(kernel_size=7),
    "cifar_resnet29_d2": _resnet29(dilations=(1, 1, 2)),
    # Table 3: grouped convs and grouped ACUs (P = groups)
    **{
        f"cifar_resnet29_{grid}_{conv}": _resnet29_grouped(**grid_args, **conv_args)
        for grid, grid_args in _GRID.items()
        for conv, conv_args in _GRID_CONVS.items()
    },
    # Table 5: depthwise ACU with one position set for all channels
    "cifar_resnet29_x1d_acu_share": _resnet29_grouped(group_width=1, conv_type="acu", position_groups=1),
}

_NOTES = {
    "cifar_resnet29_conv3": "Table 1: 3x3 Conv (Base), 1.24M",
    "cifar_resnet29_acu": "Table 1: 3x3 ACU, 1.24M; Table 2: ACU and ACU-Fixed (frozen positions)",
    "cifar_resnet29_conv7": "Table 1: 7x7 Conv, 3.82M",
    "cifar_resnet29_d2": "Table 2: Base-D2, dilation 2 in the last stage",
    "cifar_resnet29_x1d_acu_share": "Table 5: x1d/ACU/Share, 1.15M",
}

_PUBLISHED = ("cifar_resnet29_conv3", "cifar_resnet29_acu")  # checkpoints/manifest.json
default_cfgs = generate_default_cfgs(
    # Published checkpoints first; '*' keeps cifar10 the default tag (timm prefers one with weights).
    {f"{n}.fmnist": cifar_cfg(**fmnist_cfg(n), pool_size=(7, 7)) for n in _PUBLISHED}
    | {f"{name}.cifar10*": cifar_cfg(notes=(_NOTES.get(name, "Table 3 grid"),)) for name in model_cfgs}
)


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> CifarResNet:
    return create_cifar_model(variant, pretrained, **dict(model_cfgs[variant], **kwargs))


@register_model
def cifar_resnet29_conv3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-29 base: 3x3 convs (Table 1)."""
    return _create("cifar_resnet29_conv3", pretrained, kwargs)


@register_model
def cifar_resnet29_acu(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-29 with 3x3 ACUs, one position set per layer (Table 1, 2)."""
    return _create("cifar_resnet29_acu", pretrained, kwargs)


@register_model
def cifar_resnet29_conv7(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-29 with 7x7 convs (Table 1)."""
    return _create("cifar_resnet29_conv7", pretrained, kwargs)


@register_model
def cifar_resnet29_d2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-29 with dilation 2 in the last stage (Table 2, Base-D2)."""
    return _create("cifar_resnet29_d2", pretrained, kwargs)


@register_model
def cifar_resnet29_16x4d_conv3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """16x4d: cardinality 16 in every stage, 3x3 grouped convs (Table 3)."""
    return _create("cifar_resnet29_16x4d_conv3", pretrained, kwargs)


@register_model
def cifar_resnet29_16x4d_conv5(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """16x4d with 5x5 grouped convs (Table 3)."""
    return _create("cifar_resnet29_16x4d_conv5", pretrained, kwargs)


@register_model
def cifar_resnet29_16x4d_acu(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """16x4d with grouped ACUs, 16 position sets (Table 3)."""
    return _create("cifar_resnet29_16x4d_acu", pretrained, kwargs)


@register_model
def cifar_resnet29_x4d_conv3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x4d: four channels per group in every stage, 3x3 grouped convs (Table 3)."""
    return _create("cifar_resnet29_x4d_conv3", pretrained, kwargs)


@register_model
def cifar_resnet29_x4d_conv5(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x4d with 5x5 grouped convs (Table 3)."""
    return _create("cifar_resnet29_x4d_conv5", pretrained, kwargs)


@register_model
def cifar_resnet29_x4d_acu(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x4d with grouped ACUs (Table 3)."""
    return _create("cifar_resnet29_x4d_acu", pretrained, kwargs)


@register_model
def cifar_resnet29_x2d_conv3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x2d: two channels per group in every stage, 3x3 grouped convs (Table 3)."""
    return _create("cifar_resnet29_x2d_conv3", pretrained, kwargs)


@register_model
def cifar_resnet29_x2d_conv5(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x2d with 5x5 grouped convs (Table 3)."""
    return _create("cifar_resnet29_x2d_conv5", pretrained, kwargs)


@register_model
def cifar_resnet29_x2d_acu(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x2d with grouped ACUs (Table 3)."""
    return _create("cifar_resnet29_x2d_acu", pretrained, kwargs)


@register_model
def cifar_resnet29_x1d_conv3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x1d: depthwise 3x3 convs (Table 3, 5)."""
    return _create("cifar_resnet29_x1d_conv3", pretrained, kwargs)


@register_model
def cifar_resnet29_x1d_conv5(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x1d with depthwise 5x5 convs (Table 3)."""
    return _create("cifar_resnet29_x1d_conv5", pretrained, kwargs)


@register_model
def cifar_resnet29_x1d_acu(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x1d with depthwise ACUs, one position set per channel (Table 3; Table 5 x1d/ACU/Multi)."""
    return _create("cifar_resnet29_x1d_acu", pretrained, kwargs)


@register_model
def cifar_resnet29_x1d_acu_share(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """x1d with depthwise ACUs sharing one position set (Table 5, x1d/ACU/Share)."""
    return _create("cifar_resnet29_x1d_acu_share", pretrained, kwargs)
