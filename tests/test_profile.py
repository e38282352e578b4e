"""acuzoo.profile: MAdds of convs, linears and ACUs, with the paper's interpolation rule."""

import pytest
from torch import nn

from acuzoo.nn import ActiveConv2d
from acuzoo.profile import count_madds, count_params


def test_a_conv_costs_its_taps_per_output_element() -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert count_madds(conv, (4, 10, 10)) == 6 * 5 * 5 * 2 * 9


def test_a_linear_costs_in_times_out() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_madds(model, (3, 2, 2)) == 60


def test_a_depthwise_acu_adds_3_madds_per_moving_synapse_per_output_element() -> None:
    acu = ActiveConv2d(8, 8, 3, groups=8)
    conv_cost = 8 * 6 * 6 * 9
    assert count_madds(acu, (8, 6, 6)) == conv_cost + 3 * 8 * 8 * 6 * 6


def test_a_shared_position_acu_interpolates_each_input_channel_once() -> None:
    acu = ActiveConv2d(4, 16, 3, position_groups=1)
    assert count_madds(acu, (4, 5, 5)) == 16 * 25 * 4 * 9 + 3 * 8 * 25 * 4


def test_position_sets_beyond_the_groups_interpolate_an_input_once_per_set() -> None:
    acu = ActiveConv2d(4, 16, 3, groups=2, position_groups=8)
    assert count_madds(acu, (4, 5, 5)) == 16 * 25 * 2 * 9 + 3 * 8 * 25 * 4 * 4


def test_counting_leaves_the_model_untouched() -> None:
    acu = ActiveConv2d(8, 8, 3, groups=8).train()
    count_madds(acu, (8, 6, 6))
    assert acu.training and acu.weight.device.type == "cpu"


def test_parameters_include_positions() -> None:
    assert count_params(ActiveConv2d(8, 8, 3, groups=8)) == 8 * 9 + 8 * 8 * 2


def test_input_size_must_be_channels_height_width() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        count_madds(nn.Conv2d(3, 3, 1), (1, 3, 8, 8))
