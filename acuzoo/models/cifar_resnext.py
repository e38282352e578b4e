"""CIFAR ResNeXt-29 and the depthwise ACU-29 / ACU-47 of the ACU paper (Table 9, section 5.2).

ResNeXt-29 8x64d (Xie et al.'s CIFAR widths): stem 3x3 conv 64, three stages of three
bottleneck blocks, bottleneck width 512 = 8 groups x 64 channels in stage 1 and block output
256, both doubling per stage. ACU-29 replaces every 3x3 grouped conv by a depthwise ACU (one
position set per channel); ACU-47 stacks five blocks per stage.

The blocks are the paper's CIFAR blocks (Appendix B): pre-activation, with a 1x1 projection
shortcut where the shape changes, so the body is ``CifarResNet`` with ``PreActBottleneck``.
Of the structures that fit Table 9 within 1.5%, only this one gives all three of its counts at
the paper's precision; see tests/models/test_cifar_paper_parity.py.
"""

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .cifar_resnet import CifarResNet, cifar_cfg, create_cifar_model

__all__: list[str] = []


def _resnext29(depth: int = 3, depthwise_acu: bool = False) -> dict[str, Any]:
    mids = (512, 1024, 2048)  # 8 x 64d in stage 1, doubling
    return dict(
        depths=(depth,) * 3,
        widths=(256, 512, 1024),
        bottleneck_widths=mids,
        groups=mids if depthwise_acu else (8, 8, 8),
        conv_type="acu" if depthwise_acu else "conv",
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
