"""timm's model API, written once for every zoo family.

A zoo network is ``stem -> trunk -> neck -> head``: the trunk is an ``nn.Sequential`` whose
modules run in order (each is one unit of grad checkpointing), the feature taps sit between trunk
modules, the neck is what runs between the trunk and the head (a final norm, a head conv, or
nothing) and the head pools and classifies. ``ZooModel`` implements timm's API over that layout:
``forward_features``, ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``,
``reset_classifier``, ``get_classifier``, ``set_grad_checkpointing``, ``group_matcher`` and
``no_weight_decay``. A family supplies only its layout: see ``ZooModel``.
"""

import re
from typing import Any

import torch
from timm.layers import get_device_dtype
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices  # not re-exported by timm.models
from torch import nn

from ..nn import position_parameters

__all__ = ["MAX_NUM_CLASSES", "ZooModel", "check_int_range"]

MAX_NUM_CLASSES = 1_000_000
# group_matcher's suffix that merges a group into the one before it (timm's MATCH_PREV_GROUP).
_WITH_PREVIOUS_GROUP = (99999,)


def check_int_range(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else a ValueError naming the valid range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


class ZooModel(nn.Module):
    """timm's model API over a ``stem -> trunk -> neck -> head`` network.

    A family sets, in its constructor (after ``super().__init__()``):
      ``num_classes``, ``in_chans``, ``num_features`` (the neck's output width), ``head_hidden_size``;
      ``feature_info``: timm's taps (``num_chs``, ``reduction``, ``module``), one per entry of
      ``feature_ends``: how many trunk modules run before that tap (0: the stem's output);
    and defines:
      ``trunk_name`` (the attribute holding the trunk) and ``forward_trunk`` (runs it: TorchScript
      needs the attribute by its name);
      ``stem_pattern`` (group_matcher's regex for the stem's parameters), ``neck_pattern`` (the
      neck's, grouped with the last trunk module; None without parameters);
      ``forward_stem`` and ``forward_neck`` where it has them (default: nothing), ``prune_neck``
      (replaces the neck by identities) and ``neck_is_norm`` (the neck only normalises, keeping
      the last tap's shape, so ``forward_intermediates(norm=True)`` applies it);
      the head: ``forward_head``, ``get_classifier`` and ``reset_head``.
    """

    # Class attributes without annotations: TorchScript would type the annotated ones.
    trunk_name = "blocks"
    stem_pattern = r"^stem\."
    neck_pattern = None
    neck_is_norm = False

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    # --- the family's layout -----------------------------------------------------------------

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must run its trunk in forward_trunk")

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def prune_neck(self) -> None:
        """Replace the layers between the trunk and the head by identities (families that have some)."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward_head")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define get_classifier")

    def reset_head(
        self, num_classes: int, global_pool: str | None, device: torch.device | None, dtype: torch.dtype | None
    ) -> None:
        """Rebuild the classifier for ``num_classes`` (0: none) on ``num_features`` inputs, and the
        pooling when ``global_pool`` is given."""
        raise NotImplementedError(f"{type(self).__name__} must define reset_head")

    # --- timm's API ---------------------------------------------------------------------------

    def trunk(self) -> nn.Sequential:
        return getattr(self, self.trunk_name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = self._run(self.trunk(), x)
        else:
            x = self.forward_trunk(x)
        return self.forward_neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_int_range("num_classes", num_classes, 0, MAX_NUM_CLASSES)
        # Device and dtype from the body: a removed classifier has no parameters to ask.
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.reset_head(num_classes, global_pool, **dd)
        self.train(self.training)  # the new layers in the model's mode

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The stem; then each trunk module (``coarse``) or each block inside one (a trunk module
        without numbered children is one group), the neck going with the last; the rest (the head)
        last."""
        trunk = re.escape(self.trunk_name)
        blocks: list[tuple[str, tuple[int, ...] | None]] = []
        if not coarse:
            blocks.append((rf"^{trunk}\.(\d+)\.(\d+)\.", None))
        blocks.append((rf"^{trunk}\.(\d+)\.", None))
        if self.neck_pattern:
            blocks.append((self.neck_pattern, _WITH_PREVIOUS_GROUP))
        return {"stem": self.stem_pattern, "blocks": blocks}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The ACU positions' names: they train without weight decay (DESIGN.md, training
        conventions). Norm and bias parameters are not listed: timm's optimizer factory already
        exempts every parameter of one dimension or less."""
        positions = {id(p) for p in position_parameters(self)}
        return {name for name, p in self.named_parameters() if id(p) in positions}

    def _run(self, modules: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``modules(x)``, each module a checkpointed segment when grad checkpointing is on."""
        if self.grad_checkpointing and len(modules):
            return checkpoint_seq(modules, x)
        return modules(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The taps of ``feature_info`` (timm's signature), with grad checkpointing as in
        ``forward_features``.

        Args:
            x: input images.
            indices: the last n taps if int, all if None, else the listed taps.
            norm: apply the neck to the last tap where the neck only normalises (``neck_is_norm``).
            stop_early: stop after the last requested tap.
            output_fmt: only 'NCHW'.
            intermediates_only: return the taps alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        last_tap = len(self.feature_ends) - 1
        trunk = self.trunk()
        intermediates = []
        x = self.forward_stem(x)
        done = 0
        for index, end in enumerate(self.feature_ends):
            if stop_early and index > max_index:
                break
            x = self._run(trunk[done:end], x)
            done = end
            if index in take_indices:
                normed = norm and self.neck_is_norm and index == last_tap
                intermediates.append(self.forward_neck(x) if normed else x)
        if intermediates_only:
            return intermediates
        if not stop_early:
            x = self._run(trunk[done:], x)
            done = len(trunk)
        if done == len(trunk):
            x = self.forward_neck(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the trunk up to the last tap of ``indices``; returns the taps' indices. The neck
        goes with the trunk's end (or with ``prune_norm``); a head whose input width changed goes
        too, as does any head with ``prune_head``."""
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        keep = self.feature_ends[max_index]
        pruned = keep < len(self.trunk())
        setattr(self, self.trunk_name, self.trunk()[:keep])
        if pruned or prune_norm:
            self.prune_neck()
        width = self.feature_info[max_index]["num_chs"]
        new_width = width != self.num_features and (pruned or (prune_norm and not self.neck_is_norm))
        if new_width:
            self.num_features = self.head_hidden_size = width
        if prune_head or new_width:
            self.reset_classifier(0, "")
        return take_indices
