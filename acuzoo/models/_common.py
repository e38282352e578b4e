"""What every zoo model shares: argument checks, the depthwise conv/ACU switch, and the timm
model API (classifier head, feature taps, grad checkpointing) over a ``stem -> blocks -> neck``
layout."""

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn

from ..hub.pretrained import build_zoo_model
from ..nn import ActiveConv2d

MAX_IN_CHANS = 64
MAX_NUM_CLASSES = 1_000_000


def zoo_cfg(**fields: Any) -> dict[str, Any]:
    """A timm pretrained config with what every zoo model shares (no URL: weights come from
    acuzoo's checkpoint registry; licence; the paper) and the family's own ``fields``."""
    return {
        "url": "",
        "hf_hub_id": "",  # a hub's field, empty: nothing is ever downloaded
        "origin_url": "",
        "interpolation": "bilinear",
        "license": "mit",
        "paper_name": "Integrating Multiple Receptive Fields through Grouped Active Convolution",
        **fields,
    }


def imagenet_cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """A complete timm pretrained config for the ImageNet families: the paper trains and evaluates
    every ImageNet model on 224 crops of 256 images (section 5.1)."""
    family = dict(
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv=first_conv,
        classifier="classifier",
    )
    return zoo_cfg(**{**family, **kwargs})  # a tag's own fields win


def build_imagenet_model(model_cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's builder with feature taps by getter; pretrained weights come from acuzoo's checkpoint
    registry (checked, never downloaded)."""
    return build_zoo_model(model_cls, variant, pretrained, feature_cfg={"feature_cls": "getter"}, **kwargs)


def check_int_range(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else a ValueError naming the valid range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


def check_model_args(in_chans: int, num_classes: int, drop_rate: float) -> None:
    """The checks every zoo model runs on its common constructor arguments."""
    check_int_range("in_chans", in_chans, 1, MAX_IN_CHANS)
    check_int_range("num_classes", num_classes, 0, MAX_NUM_CLASSES)
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")


def depthwise_conv(
    channels: int, stride: int = 1, acu: bool = False, **dd: Any
) -> nn.Module:
    """A 3x3 depthwise conv with 'same' padding, or the depthwise ACU (P = C) that starts equal to it."""
    if acu:
        return ActiveConv2d(channels, channels, 3, stride, groups=channels, **dd)
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False, **dd)


def pooling(pool_type: str) -> SelectAdaptivePool2d:
    """timm's global pool; no pooling ('') keeps the (N, C, H, W) map, unflattened."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class ZooNet(nn.Module):
    """timm's model API for a ``forward_stem -> blocks -> forward_neck -> head`` network.

    A subclass builds ``self.blocks`` (an ``nn.Sequential``), sets ``self.stage_ends`` (the
    block index after which each feature tap sits) and ``self.feature_info``, overrides
    ``forward_stem`` / ``forward_neck`` where it has them, and calls ``init_head`` last.
    """

    stem_pattern = r"^stem"

    def init_head(
        self, num_features: int, num_classes: int, global_pool: str, drop_rate: float, **dd: Any
    ) -> None:
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.global_pool = pooling(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(num_features, num_classes, **dd) if num_classes else nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.forward_neck(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_int_range("num_classes", num_classes, 0, MAX_NUM_CLASSES)
        like = next(self.parameters())
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = pooling(global_pool)
        self.classifier = (
            nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
            if num_classes
            else nn.Identity()
        )
        self.classifier.train(self.training)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"
        return {"stem": self.stem_pattern, "blocks": blocks}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # ACU positions train without weight decay (DESIGN.md, training conventions).
        return {name for name, _ in self.named_parameters() if name.endswith("positions")}

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature taps of ``feature_info`` (timm's signature); ``norm`` has no effect here,
        the taps being block outputs."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_blocks = {self.stage_ends[i] for i in take_indices}
        last = self.stage_ends[max_index] if stop_early else len(self.blocks) - 1
        intermediates = []
        x = self.forward_stem(x)
        for i, block in enumerate(self.blocks[: last + 1]):
            x = block(x)
            if i in take_blocks:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if last == len(self.blocks) - 1:
            x = self.forward_neck(x)
        return x, intermediates

    def prune_neck(self) -> None:
        """Drop the layers between the last block and the pool (subclasses that have some)."""

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the blocks up to the last tap of ``indices``; returns the taps' indices."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        keep = self.stage_ends[max_index] + 1
        pruned = keep < len(self.blocks)
        self.blocks = self.blocks[:keep]
        if prune_norm or pruned:
            self.prune_neck()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices
