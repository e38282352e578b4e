"""Start acuzoo models from ordinary pretrained convnets (Lemma 1: a conv is an ACU on its grid).

timm's ``mobilenetv2_*`` (any width) and torchvision's ``mobilenet_v2`` (any ``width_mult``)
become ``mobilenetv2_acu_*`` / ``mobilenetv2_conv_*``; timm's ``legacy_xception`` becomes
``xception_acu`` / ``xception_conv``. The layers correspond one to one, in order (the zoo keeps the
sources' layouts), so weights are copied layer by layer, each pair checked; a depthwise conv that
becomes an ACU keeps its 3x3 weights with the positions on the grid, so the outputs are the same.

A source built with another BatchNorm eps (timm's ``bn_eps``) converts too: the zoo's layers keep
their eps (a weights file cannot carry it), and the difference is added to the running variance,
which gives the same normalisation in eval mode.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from ..models.mobilenetv2 import WIDTHS, MobileNetV2
from ..nn import ActiveConv2d
from ..nn.active_conv import conv2d_refusal

__all__ = ["convert_pretrained", "copy_layer_weights", "mobilenetv2_width"]

_LAYERS = (nn.Conv2d, ActiveConv2d, nn.BatchNorm2d, nn.Linear)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def _mismatch(src: nn.Module, dst: nn.Module) -> str | None:
    """Why ``dst`` cannot compute what ``src`` computes once given ``src``'s tensors, or None."""
    if isinstance(src, nn.Conv2d):
        if isinstance(dst, ActiveConv2d):
            refusal = conv2d_refusal(src)
            if refusal:
                return refusal
        elif not isinstance(dst, nn.Conv2d):
            return f"{type(dst).__name__} is not a conv"
        elif type(src).forward is not nn.Conv2d.forward:
            return (
                f"{type(src).__name__} overrides forward (e.g. timm's Conv2dSame, from pad_type='same', pads at run "
                "time, asymmetrically with stride 2); the zoo's convs pad symmetrically"
            )
        elif dst.padding != src.padding:
            return f"padding {src.padding} vs {dst.padding}"
        same = ("in_channels", "out_channels", "kernel_size", "stride", "groups", "dilation")
        diffs = [f"{a} {getattr(src, a)} vs {getattr(dst, a)}" for a in same if getattr(src, a) != getattr(dst, a)]
        if (src.bias is None) != (dst.bias is None):
            diffs.append("bias vs no bias")
        return ", ".join(diffs) or None
    if isinstance(src, nn.BatchNorm2d):  # timm's BatchNormAct2d included: its tensors are BN's
        if not isinstance(dst, nn.BatchNorm2d) or dst.num_features != src.num_features:
            return f"BatchNorm2d({src.num_features}, eps={src.eps}) vs {dst}"
        return _eps_refusal(src, dst)
    if isinstance(src, nn.Linear):
        if not isinstance(dst, nn.Linear) or dst.weight.shape != src.weight.shape:
            return f"{src} vs {dst}"
        return None
    return f"{type(src).__name__} is not a conv, BN or linear layer"


def _eps_refusal(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> str | None:
    """Why ``src``'s eps cannot be folded into ``dst``'s running variance, or None."""
    if src.eps == dst.eps:
        return None
    if src.running_var is None or dst.running_var is None:
        return f"eps {src.eps} vs {dst.eps} without running statistics to fold the difference into"
    if float((src.running_var + (src.eps - dst.eps)).min()) < 0:
        return f"eps {src.eps} vs {dst.eps}: the running variance is too small to absorb the difference"
    return None


@torch.no_grad()
def _copy(src: nn.Module, dst: nn.Module) -> None:
    """Copy one checked layer's tensors (a conv's 3x3 weight becomes the ACU's 9 synapses)."""
    dst.weight.copy_(src.weight.reshape(dst.weight.shape))
    if getattr(src, "bias", None) is not None:
        dst.bias.copy_(src.bias)
    if isinstance(dst, ActiveConv2d):
        dst.reset_positions()
    if isinstance(src, nn.BatchNorm2d):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(src, name) is not None and getattr(dst, name) is not None:
                getattr(dst, name).copy_(getattr(src, name))
        if src.eps != dst.eps:  # same var + eps under the square root (checked by _eps_refusal)
            dst.running_var.add_(src.eps - dst.eps)


def copy_layer_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    """Copy every conv, BN and linear layer of ``source`` into the layer of ``target`` at the same
    position in module order (a conv may land in an ACU). Every pair is checked before anything is
    copied; a ValueError names the first pair that does not correspond."""
    src, dst = _layers(source), _layers(target)
    if len(src) != len(dst):
        raise ValueError(f"source has {len(src)} conv/BN/linear layers, target {len(dst)}: not the same network")
    for (s_name, s), (d_name, d) in zip(src, dst):
        reason = _mismatch(s, d)
        if reason:
            raise ValueError(f"source layer '{s_name}' does not correspond to target layer '{d_name}': {reason}")
    for (_, s), (_, d) in zip(src, dst):
        _copy(s, d)
    return target


def mobilenetv2_width(source: nn.Module) -> float:
    """The width multiplier of a MobileNetV2 (timm's or torchvision's), from its layer shapes: the
    multiple of 0.05 whose acuzoo network has exactly these shapes."""
    shapes = [tuple(m.weight.shape[:2]) for _, m in _layers(source) if isinstance(m, nn.Conv2d)]
    in_chans = shapes[0][1]
    # The last block has 320 x width channels (rounded to 8): only widths near that can fit.
    near = shapes[-1][1] / 320  # the head conv reads the last block
    for step in range(max(1, round(20 * near) - 2), min(80, round(20 * near) + 2) + 1):  # multiples of 0.05 <= 4
        width = step / 20
        candidate = MobileNetV2(width=width, in_chans=in_chans, num_classes=1, device="meta")
        mine = [tuple(m.weight.shape[:2]) for _, m in _layers(candidate) if isinstance(m, nn.Conv2d)]
        if mine == shapes:
            return width
    raise ValueError("not a MobileNetV2 of any width multiple of 0.05 (depth multipliers such as timm's *d are not)")


def _classes_and_chans(source: nn.Module) -> tuple[int, int]:
    layers = _layers(source)
    first = next(m for _, m in layers if isinstance(m, nn.Conv2d))
    last = layers[-1][1]
    return (last.out_features if isinstance(last, nn.Linear) else 0), first.in_channels


def _target_name(source: nn.Module, acu: bool) -> tuple[str, dict]:
    """The acuzoo model (registered name, extra constructor args) matching ``source``."""
    kind = "acu" if acu else "conv"
    module = type(source).__module__
    if module.startswith("torchvision.models") and type(source).__name__ == "MobileNetV2" or (
        module.startswith("timm.models") and type(source).__name__ == "EfficientNet"
        and str(getattr(source, "pretrained_cfg", {}).get("architecture", "")).startswith("mobilenetv2_")
    ):
        width = mobilenetv2_width(source)
        names = {v: k for k, v in WIDTHS.items()}
        return (f"mobilenetv2_{kind}_{names[width]}", {}) if width in names else ("", {"width": width, "acu": acu})
    if module == "timm.models.xception" and type(source).__name__ == "Xception":
        return f"xception_{kind}", {}
    raise TypeError(
        f"cannot convert {type(source).__module__}.{type(source).__name__}: supported sources are timm's "
        "mobilenetv2_* (EfficientNet built as mobilenetv2), torchvision's mobilenet_v2 and timm's legacy_xception"
    )


def convert_pretrained(source: nn.Module, acu: bool = True) -> nn.Module:
    """The acuzoo model equal to ``source`` (timm mobilenetv2_*, torchvision mobilenet_v2, timm
    legacy_xception), with ACUs (``acu``) or its conv twin; same class count and input channels.

    Returns a registered timm model (``model.pretrained_cfg['architecture']`` names it) or, for a
    MobileNetV2 width the zoo does not register, a ``MobileNetV2(width=..., acu=...)``.
    """
    name, args = _target_name(source, acu)
    num_classes, in_chans = _classes_and_chans(source)
    if name:
        target = timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    else:
        target = MobileNetV2(num_classes=num_classes, in_chans=in_chans, **args)
    copy_layer_weights(source, target)
    return target.train(source.training)
