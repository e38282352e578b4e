"""Model surgery: turn matching convs of any model into ACUs, and fuse ACUs back to convs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .active_conv import MAX_FUSED_KERNEL_SIZE, ActiveConv2d, conv2d_refusal

_logger = logging.getLogger(__name__)


def is_depthwise_conv(conv: nn.Conv2d) -> bool:
    """A depthwise conv: groups == C_in == C_out > 1 and a kernel larger than 1x1. Whether an ACU
    can represent it is ``conv2d_refusal``'s call."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels and max(conv.kernel_size) > 1


@dataclass(frozen=True)
class AcuConversion:
    """Which convs ``convert_to_acu`` turns into ACUs, and which it leaves as they are, with why."""

    converted: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"convert_to_acu: {len(self.converted)} conv(s) converted to ACUs"
        if self.left:
            text += f", {len(self.left)} left as convs: " + "; ".join(f"'{n}': {r}" for n, r in self.left.items())
        return text


def plan_acu_conversion(model: nn.Module, predicate: Callable[[nn.Conv2d], bool] = is_depthwise_conv) -> AcuConversion:
    """What ``convert_to_acu(model, predicate)`` does, without changing the model: the module
    names of the convs it converts and of those it leaves (an ACU cannot represent them), with
    the reason."""
    plan = AcuConversion()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and predicate(module):
            reason = conv2d_refusal(module)
            if reason is None:
                plan.converted.append(name)
            else:
                plan.left[name] = reason
    return plan


def _replace(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    # Collect first: replacing while iterating named_modules would skip or revisit children.
    targets = []
    for name, module in model.named_modules():
        new = make(name, module)
        if new is not None:
            targets.append((name, new))
    for name, new in targets:
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def convert_to_acu(
    model: nn.Module,
    predicate: Callable[[nn.Conv2d], bool] = is_depthwise_conv,
    position_groups: int | None = None,
    strict: bool = False,
) -> nn.Module:
    """Replace every ``nn.Conv2d`` for which ``predicate`` holds by the equal ActiveConv2d.

    The model's output does not change (Lemma 1). Returns the model (a new module when
    ``model`` itself is a matching conv). A matching conv that an ACU cannot represent (e.g.
    timm's ``Conv2dSame``) is left as it is and named with the reason in a warning; with
    ``strict=True`` it raises instead, before anything changes. ``plan_acu_conversion`` gives
    the same lists as a value; what was done is logged.
    """
    plan = plan_acu_conversion(model, predicate)
    if plan.left and strict:
        raise ValueError(
            "convert_to_acu(strict=True): an ACU cannot represent these matching convs: "
            + "; ".join(f"'{name}': {reason}" for name, reason in plan.left.items())
        )
    targets = set(plan.converted)

    def make(name: str, module: nn.Module) -> nn.Module | None:
        if name not in targets:
            return None
        try:
            return ActiveConv2d.from_conv2d(module, position_groups)
        except ValueError as err:  # e.g. position_groups that does not divide this conv's channels
            raise ValueError(f"module '{name}': {err}") from None

    model = _replace(model, make)
    (_logger.warning if plan.left else _logger.info)(plan.describe())
    return model


def fuse_acu(model: nn.Module, max_kernel_size: int = MAX_FUSED_KERNEL_SIZE) -> nn.Module:
    """Replace every ActiveConv2d by its exact ``nn.Conv2d`` (Theorem 2), for deployment.

    Every layer is checked before any is replaced: non-finite positions, or a kernel side
    beyond ``max_kernel_size``, raise a ValueError naming the module.
    """

    def make(name: str, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, ActiveConv2d):
            return None
        try:
            return module.to_conv2d(max_kernel_size)
        except ValueError as err:
            raise ValueError(f"fuse_acu: module '{name}': {err}" if name else f"fuse_acu: {err}") from None

    return _replace(model, make)
