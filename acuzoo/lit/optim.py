"""Parameter groups and learning-rate schedules for the paper's recipes (DESIGN.md, Training conventions)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

from ..nn import position_parameters

Schedule = Literal["multistep", "linear", "constant"]


def parameter_groups(
    model: nn.Module, weight_decay: float, no_weight_decay_norm_bias: bool = False
) -> list[dict[str, Any]]:
    """The trainable parameters other than ACU positions, in named groups: "decay" and "no_decay"
    (BN and bias, when asked); every group at the optimizer's lr. Empty groups are left out.

    The positions are left out on purpose: ``PositionLearningRate`` is their group's one owner (it
    adds the group, at ``lr_mult`` x the weights' lr, without weight decay), so that their lr is
    set in one place."""
    positions = {id(p) for p in position_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in positions:
            continue
        # Norm scales/shifts and biases are the 0-/1-D parameters of a conv net.
        (no_decay if no_weight_decay_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class LinearDecay:
    """lr factor 1 - t / length, floored at 0 (paper 5.1: linear decay over 60 epochs).

    A callable object rather than a lambda so that LambdaLR checkpoints and restores it."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"linear decay needs a length >= 1, got {length}")
        self.length = length

    def __call__(self, t: int) -> float:
        return max(0.0, 1.0 - t / self.length)


def build_schedule(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    milestones: tuple[int, ...] | list[int] | None = None,
    gamma: float = 0.1,
    length: int | None = None,
) -> LRScheduler:
    """A scheduler that scales every group's own base lr, so ratios between groups hold."""
    if schedule == "multistep":
        if not milestones:
            raise ValueError("schedule 'multistep' needs milestones")
        return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if schedule == "linear":
        if length is None:
            raise ValueError("schedule 'linear' needs a length (steps or epochs)")
        return LambdaLR(optimizer, LinearDecay(int(length)))
    if schedule == "constant":
        return LambdaLR(optimizer, ConstantFactor())
    raise ValueError(f"schedule must be 'multistep', 'linear' or 'constant', got {schedule!r}")


class ConstantFactor:
    """lr factor 1 (a picklable stand-in for ``lambda t: 1.0``)."""

    def __call__(self, t: int) -> float:
        return 1.0
