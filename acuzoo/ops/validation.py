"""Argument checks for the ACU operator: every message names the argument and what was expected."""

from __future__ import annotations

import torch


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int or a pair of ints >= 1 (stride), as a pair."""
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name} must be an int >= 1 or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for types autocast does not know)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def check_active_conv2d_args(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
) -> None:
    """Raise ValueError/TypeError naming the offending argument when shapes, dtypes or devices disagree."""
    for name, t in (("input", input), ("weight", weight), ("positions", positions)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C_in, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be 3-D (C_out, C_in // groups, K), got shape {tuple(weight.shape)}")
    if positions.dim() != 3 or positions.shape[-1] != 2:
        raise ValueError(
            f"positions must be 3-D (P, K, 2) of (row, column) displacements, got shape {tuple(positions.shape)}"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    n, c_in, h, w = input.shape
    c_out, c_per_group, k = weight.shape
    p, k_pos, _ = positions.shape
    if h < 1 or w < 1:
        # An empty batch (N = 0) is fine, as in nn.Conv2d: an empty output, empty gradients.
        raise ValueError(f"input must have H, W >= 1, got shape {tuple(input.shape)}")
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"weight's C_out ({c_out}) must be divisible by groups ({groups})")
    if c_per_group != c_in // groups:
        raise ValueError(
            f"weight must have shape (C_out, C_in // groups, K) = (_, {c_in // groups}, _) for "
            f"C_in={c_in}, groups={groups}; got {tuple(weight.shape)}"
        )
    if k_pos != k:
        raise ValueError(f"positions has K={k_pos} synapses per set but weight has K={k}; they must match")
    if p < 1 or c_out % p:
        raise ValueError(f"positions has P={p} position sets; P must divide weight's C_out ({c_out})")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (c_out,)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({c_out},), got {shape}")
    tensors = {"input": input, "weight": weight, "positions": positions}
    if bias is not None:
        tensors["bias"] = bias
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    same_dtype = weight.dtype == input.dtype and (bias is None or bias.dtype == input.dtype)
    if not same_dtype and not autocast_enabled(input.device.type):
        raise TypeError(
            f"weight and bias must have input's dtype ({input.dtype}), got weight "
            f"{weight.dtype}" + (f", bias {bias.dtype}" if bias is not None else "")
        )
