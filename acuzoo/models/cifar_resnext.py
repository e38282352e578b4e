"""CIFAR ResNeXt-29 and the depthwise ACU-29 / ACU-47 of the ACU paper (Table 9, section 5.2).

ResNeXt-29 8x64d as Xie et al. define it for CIFAR: stem 3x3 conv 64, three stages of three
post-activation bottleneck blocks, bottleneck width 512 = 8 groups x 64 channels in stage 1
and block output 256, both doubling per stage, a 1x1 conv + BN projection shortcut where the
shape changes. ACU-29 replaces every 3x3 grouped conv by a depthwise ACU (one position set
per channel); ACU-47 stacks five blocks per stage.

The network body is ``CifarResNet`` (``cifar_resnet.py``) given this file's post-activation
block; the parameter counts pin down the stem width and the projection shortcut (see
tests/models/test_cifar_paper_parity.py).
"""


from collections.abc import Callable
from typing import Any

import torch
from timm.layers import BatchNormAct2d, ConvNormAct
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .cifar_resnet import CifarResNet, cifar_cfg, create_cifar_model, create_spatial_conv

__all__ = ["Bottleneck"]


class Bottleneck(nn.Module):
    """Post-activation bottleneck (ResNeXt): (conv-BN-ReLU) x 2, conv-BN, add, ReLU."""

    preact = False  # the model puts BN-ReLU on the stem and no norm after the last block

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
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.norm1 = BatchNormAct2d(mid_chs, **dd)
        self.conv2 = spatial_layer(mid_chs, mid_chs, stride=stride, groups=groups, dilation=dilation, **dd)
        self.norm2 = BatchNormAct2d(mid_chs, **dd)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd)
        self.norm3 = BatchNormAct2d(out_chs, apply_act=False, **dd)
        needs_projection = stride != 1 or in_chs != out_chs
        self.downsample = (
            ConvNormAct(in_chs, out_chs, 1, stride, apply_act=False, **dd) if needs_projection else None
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act(x + shortcut)


def _resnext29(depth: int = 3, depthwise_acu: bool = False) -> dict[str, Any]:
    widths = (256, 512, 1024)
    mids = (512, 1024, 2048)  # 8 x 64d in stage 1, doubling
    groups = mids if depthwise_acu else (8, 8, 8)
    return dict(
        depths=(depth,) * 3,
        widths=widths,
        bottleneck_widths=mids,
        groups=groups,
        conv_type="acu" if depthwise_acu else "conv",
        block_fn=Bottleneck,
    )


model_cfgs: dict[str, dict[str, Any]] = {
    "cifar_resnext29_8x64d": _resnext29(),
    "cifar_acu29_x1d": _resnext29(depthwise_acu=True),
    "cifar_acu47_x1d": _resnext29(depth=5, depthwise_acu=True),
}

default_cfgs = generate_default_cfgs(
    {
        "cifar_resnext29_8x64d.cifar10": cifar_cfg(notes=("Table 9: ResNeXt-29, 8x64d, 34.4M",)),
        "cifar_acu29_x1d.cifar10": cifar_cfg(notes=("Table 9: Depthwise ACU-29, x1d, 16.13M",)),
        "cifar_acu47_x1d.cifar10": cifar_cfg(notes=("Table 9: Depthwise ACU-47, x1d, 27.37M",)),
    }
)


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> CifarResNet:
    return create_cifar_model(variant, pretrained, **dict(model_cfgs[variant], **kwargs))


@register_model
def cifar_resnext29_8x64d(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNeXt-29, 8x64d (Table 9)."""
    return _create("cifar_resnext29_8x64d", pretrained, kwargs)


@register_model
def cifar_acu29_x1d(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNeXt-29 with depthwise ACUs in place of the 3x3 grouped convs (Table 9, ACU-29)."""
    return _create("cifar_acu29_x1d", pretrained, kwargs)


@register_model
def cifar_acu47_x1d(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Depthwise ACU-29 with five blocks per stage (Table 9, ACU-47)."""
    return _create("cifar_acu47_x1d", pretrained, kwargs)
