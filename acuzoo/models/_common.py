"""What the zoo's families share: argument checks, the depthwise conv/ACU switch, the builder they
call, and ``ZooNet``, the layout of the ImageNet families (a ``blocks`` trunk and a pool, dropout,
linear head, as timm's EfficientNet) over the timm API of ``_zoo_api.ZooModel``."""

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from ..nn import ActiveConv2d
from ._builder import build_zoo_model
from ._zoo_api import MAX_NUM_CLASSES, ZooModel, check_int_range

__all__ = [
    "MAX_IN_CHANS",
    "MAX_NUM_CLASSES",
    "ZooNet",
    "build_family_model",
    "check_int_range",
    "check_model_args",
    "depthwise_conv",
    "pooling",
]

MAX_IN_CHANS = 64


def build_family_model(
    model_cls: type[nn.Module], variant: str, pretrained: bool, num_taps: int = 5, **kwargs: Any
) -> nn.Module:
    """timm's builder for a zoo family: ``features_only`` gives the model's ``num_taps`` feature taps
    through ``forward_intermediates``; pretrained weights come from acuzoo's checkpoint registry
    (checked, never downloaded)."""
    feature_cfg = {"feature_cls": "getter", "out_indices": tuple(range(num_taps))}
    return build_zoo_model(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def check_model_args(in_chans: int, num_classes: int, drop_rate: float) -> None:
    """The checks every zoo model runs on its common constructor arguments."""
    check_int_range("in_chans", in_chans, 1, MAX_IN_CHANS)
    check_int_range("num_classes", num_classes, 0, MAX_NUM_CLASSES)
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")


def depthwise_conv(channels: int, stride: int = 1, acu: bool = False, **dd: Any) -> nn.Module:
    """A 3x3 depthwise conv with 'same' padding, or the depthwise ACU (P = C) that starts equal to it."""
    if acu:
        return ActiveConv2d(channels, channels, 3, stride, groups=channels, **dd)
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False, **dd)


def pooling(pool_type: str) -> SelectAdaptivePool2d:
    """timm's global pool; no pooling ('') keeps the (N, C, H, W) map, unflattened."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class ZooNet(ZooModel):
    """The ImageNet families' layout: ``forward_stem -> blocks -> forward_neck -> global_pool ->
    head_drop -> classifier`` (timm's EfficientNet names, so that timm's weights convert).

    A subclass builds ``self.blocks`` (an ``nn.Sequential``), sets ``self.feature_ends`` and
    ``self.feature_info`` (see ``ZooModel``), overrides ``forward_stem`` / ``forward_neck`` /
    ``prune_neck`` where it has them, and calls ``init_head`` last.
    """

    trunk_name = "blocks"

    def init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float, **dd: Any) -> None:
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.global_pool = pooling(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(num_features, num_classes, **dd) if num_classes else nn.Identity()

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_head(
        self, num_classes: int, global_pool: str | None, device: torch.device | None, dtype: torch.dtype | None
    ) -> None:
        if global_pool is not None:
            self.global_pool = pooling(global_pool)
        self.classifier = (
            nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) if num_classes else nn.Identity()
        )
