"""How far each ACU layer's synapses moved from the grid they started on (paper Figs. 4, 8-10,
summarised as numbers): per layer, the distance of every movable synapse from its grid place."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .active_conv import ActiveConv2d

__all__ = ["LayerDisplacement", "displacement_by_layer"]


@dataclass(frozen=True)
class LayerDisplacement:
    """One ACU layer (or one set of layers sharing a positions tensor, named by the first)."""

    name: str
    position_sets: int  # P: groups or channels with shapes of their own
    synapses: int  # movable synapses per set (the origin is fixed)
    mean_px: float  # mean Euclidean distance from the grid
    median_px: float
    max_px: float
    threshold_px: float
    beyond_threshold: float  # fraction of synapses more than threshold_px from the grid

    def as_row(self) -> dict[str, float | int | str]:
        return self.__dict__.copy()


def displacement_by_layer(model: nn.Module, threshold_px: float = 0.5) -> list[LayerDisplacement]:
    """Every ACU of ``model`` in module order; a positions tensor shared by several layers counts once."""
    if not threshold_px >= 0:
        raise ValueError(f"threshold_px must be >= 0, got {threshold_px}")
    seen: set[int] = set()
    out = []
    for name, layer in model.named_modules():
        if not isinstance(layer, ActiveConv2d) or id(layer.positions) in seen:
            continue
        seen.add(id(layer.positions))
        with torch.no_grad():
            moved = (layer.positions.float() - layer.initial_positions().float()).norm(dim=-1).flatten()
        out.append(
            LayerDisplacement(
                name=name,
                position_sets=layer.positions.shape[0],
                synapses=layer.positions.shape[1],
                mean_px=moved.mean().item(),
                median_px=moved.median().item(),
                max_px=moved.max().item(),
                threshold_px=threshold_px,
                beyond_threshold=(moved > threshold_px).float().mean().item(),
            )
        )
    return out
