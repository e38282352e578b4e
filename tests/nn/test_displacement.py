"""acuzoo.nn.displacement_by_layer: how far the synapses moved from their grid, per ACU layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acuzoo.nn import ActiveConv2d, displacement_by_layer


def test_a_layer_on_its_grid_has_not_moved() -> None:
    (layer,) = displacement_by_layer(nn.Sequential(ActiveConv2d(4, 4, 3, groups=4, position_groups=4)))
    assert (layer.name, layer.position_sets, layer.synapses) == ("0", 4, 8)
    assert layer.mean_px == layer.max_px == layer.beyond_threshold == 0.0


def test_distances_are_euclidean_from_each_synapses_grid_place() -> None:
    acu = ActiveConv2d(2, 2, 3, groups=2, position_groups=2)
    with torch.no_grad():
        acu.positions[0, 0] += torch.tensor([0.3, 0.4])  # 0.5 px: not beyond 0.5
        acu.positions[1, 5] += torch.tensor([-1.2, 0.5])  # 1.3 px
    (layer,) = displacement_by_layer(nn.Sequential(nn.Conv2d(2, 2, 1), acu))
    assert layer.name == "1"
    assert layer.mean_px == pytest.approx(1.8 / 16, abs=1e-6)
    assert layer.max_px == pytest.approx(1.3, abs=1e-6)
    assert layer.beyond_threshold == pytest.approx(1 / 16)
    (strict,) = displacement_by_layer(nn.Sequential(acu), threshold_px=0.4)
    assert strict.beyond_threshold == pytest.approx(2 / 16)


def test_a_positions_tensor_shared_by_layers_counts_once() -> None:
    first, second = ActiveConv2d(2, 2, 3), ActiveConv2d(2, 2, 3)
    second.positions = first.positions
    assert [d.name for d in displacement_by_layer(nn.Sequential(first, second, ActiveConv2d(2, 2, 3)))] == ["0", "2"]


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold_px"):
        displacement_by_layer(nn.Sequential(ActiveConv2d(2, 2, 3)), threshold_px=-1)
