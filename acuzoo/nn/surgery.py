"""Model surgery: turn matching convs of any model into ACUs, and fuse ACUs back to convs."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .active_conv import ActiveConv2d, conv2d_refusal


def is_depthwise_conv(conv: nn.Conv2d) -> bool:
    """A depthwise conv (groups == C_in == C_out > 1, kernel > 1) that an ACU can represent."""
    return (
        conv.groups > 1
        and conv.groups == conv.in_channels == conv.out_channels
        and max(conv.kernel_size) > 1
        and conv2d_refusal(conv) is None
    )


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
) -> nn.Module:
    """Replace every ``nn.Conv2d`` for which ``predicate`` holds by the equal ActiveConv2d.

    The model's output does not change (Lemma 1). Returns the model (a new module when
    ``model`` itself is a matching conv). A matching conv that an ACU cannot represent raises.
    """

    def make(name: str, module: nn.Module):
        if isinstance(module, nn.Conv2d) and predicate(module):
            try:
                return ActiveConv2d.from_conv2d(module, position_groups)
            except ValueError as err:
                raise ValueError(f"module '{name}': {err}") from None
        return None

    return _replace(model, make)


def fuse_acu(model: nn.Module) -> nn.Module:
    """Replace every ActiveConv2d by its exact ``nn.Conv2d`` (Theorem 2), for deployment."""
    return _replace(model, lambda _, m: m.to_conv2d() if isinstance(m, ActiveConv2d) else None)
