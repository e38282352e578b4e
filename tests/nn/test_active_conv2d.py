"""ActiveConv2d: parameters, initial equivalence with nn.Conv2d, exact conversions."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acuzoo.nn import ActiveConv2d


@pytest.mark.parametrize("groups, position_groups, expected_sets", [(1, None, 1), (4, None, 4), (8, 8, 8), (4, 2, 2)])
def test_positions_hold_two_numbers_per_movable_synapse_per_set(groups, position_groups, expected_sets):
    layer = ActiveConv2d(8, 8, 3, groups=groups, position_groups=position_groups)
    assert layer.positions.shape == (expected_sets, 8, 2)
    assert layer.positions.numel() == 2 * (9 - 1) * expected_sets  # eq. 7


def test_full_positions_put_the_fixed_origin_at_the_centre_of_the_grid():
    full = ActiveConv2d(2, 2, 3).full_positions()
    grid = [[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]
    assert full[0].tolist() == grid


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_at_init_it_computes_the_same_padding_conv(groups, stride, dilation):
    torch.manual_seed(0)
    layer = ActiveConv2d(8, 12, 3, stride, groups, bias=True, dilation=dilation).double()
    x = torch.randn(2, 8, 11, 10, dtype=torch.float64)
    expected = F.conv2d(x, layer.weight.view(12, 8 // groups, 3, 3), layer.bias, stride, dilation, dilation, groups)
    assert (layer(x) - expected).abs().max() < 1e-12


def test_weight_is_initialised_like_a_conv():
    torch.manual_seed(0)
    bound = ActiveConv2d(16, 16, 3).weight.abs().max()
    torch.manual_seed(0)
    assert torch.equal(bound, nn.Conv2d(16, 16, 3, bias=False).weight.abs().max())


def test_extra_repr_shows_synapses_sets_and_spread():
    layer = ActiveConv2d(8, 8, 3, groups=8)
    with torch.no_grad():
        layer.positions[0, 0, 0] = -2.5
    text = repr(layer)
    assert "K=9" in text and "P=8" in text and "spread=2.50" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"groups": 3}, r"groups \(3\) must divide"),
        ({"position_groups": 5}, r"position_groups \(5\) must be an int >= 1 dividing out_channels"),
        ({"stride": 0}, "stride must be an int >= 1"),
        # A bool is an int to Python; nn.Conv2d accepts groups=True and fails only in forward.
        ({"groups": True}, "groups must be an int >= 1, got True"),
        ({"position_groups": True}, r"position_groups \(True\) must be an int >= 1"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActiveConv2d(8, 8, **kwargs)


def test_frozen_positions_get_no_gradient_but_weights_do():
    layer = ActiveConv2d(4, 4, 3)
    layer.positions.requires_grad_(False)
    layer(torch.randn(1, 4, 6, 6)).sum().backward()
    assert layer.positions.grad is None and layer.weight.grad is not None


class TestConversions:
    @pytest.mark.parametrize("groups", [1, 4, 8])
    def test_conv_to_acu_to_conv_round_trip_is_bit_exact_at_init(self, groups):
        conv = nn.Conv2d(8, 8, 3, 2, 1, groups=groups, bias=True)
        back = ActiveConv2d.from_conv2d(conv).to_conv2d()
        assert back.kernel_size == (3, 3) and back.stride == (2, 2) and back.padding == (1, 1)
        assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)

    def test_from_conv2d_keeps_the_output(self):
        conv = nn.Conv2d(6, 6, 5, padding=2, groups=6).double()
        x = torch.randn(1, 6, 9, 9, dtype=torch.float64)
        assert (ActiveConv2d.from_conv2d(conv)(x) - conv(x)).abs().max() < 1e-12

    @pytest.mark.parametrize("groups, position_groups", [(1, 1), (4, 4), (8, 8), (4, 2)])
    def test_to_conv2d_equals_an_acu_with_moved_positions(self, groups, position_groups):
        torch.manual_seed(1)
        acu = ActiveConv2d(8, 8, 3, 2, groups, position_groups, bias=True).double()
        with torch.no_grad():
            acu.positions.uniform_(-2.6, 2.6)
        x = torch.randn(2, 8, 13, 12, dtype=torch.float64)
        conv = acu.to_conv2d()
        assert (conv(x) - acu(x)).abs().max() < 1e-12

    @pytest.mark.parametrize("reach, kernel", [(0.0, 3), (0.9, 3), (1.0, 3), (1.2, 5), (2.3, 7)])
    def test_to_conv2d_uses_the_smallest_kernel_holding_every_synapse(self, reach, kernel):
        acu = ActiveConv2d(2, 2, 3)
        with torch.no_grad():
            acu.positions.clamp_(-0.5, 0.5)
            acu.positions[0, 0] = torch.tensor([reach, -reach])
        assert acu.to_conv2d().kernel_size == (kernel, kernel)

    @pytest.mark.parametrize(
        "conv, reason",
        [
            (nn.Conv2d(4, 4, 2, padding=1), "even"),
            (nn.Conv2d(4, 4, 3, padding=0), "not 'same' padding"),
            (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "not zero padding"),
        ],
    )
    def test_convs_that_are_not_acus_are_refused_with_the_reason(self, conv, reason):
        with pytest.raises(ValueError, match=reason):
            ActiveConv2d.from_conv2d(conv)

    @pytest.mark.parametrize("value", [float("nan"), float("-inf")])
    def test_to_conv2d_refuses_non_finite_positions_naming_the_layer(self, value):
        acu = ActiveConv2d(2, 3, 3)
        with torch.no_grad():
            acu.positions[0, 2, 1] = value
        with pytest.raises(ValueError, match=r"ActiveConv2d\(2, 3, kernel_size=\(3, 3\)\) has non-finite"):
            acu.to_conv2d()

    def test_to_conv2d_refuses_a_kernel_beyond_its_limit_before_building_it(self):
        acu = ActiveConv2d(2, 2, 3)
        with torch.no_grad():
            acu.positions[0, 0, 0] = 32.0
        with pytest.raises(ValueError, match=r"65 x 3 kernel .*beyond max_kernel_size=63"):
            acu.to_conv2d()
        assert acu.to_conv2d(max_kernel_size=65).kernel_size == (65, 3)

    def test_dynamic_same_padding_convs_are_refused(self):
        from timm.layers import Conv2dSame

        with pytest.raises(ValueError, match="overrides forward"):
            ActiveConv2d.from_conv2d(Conv2dSame(4, 4, 3, stride=2))


def test_a_scripted_acu_runs_in_process_and_matches():
    layer = ActiveConv2d(4, 4, 3, groups=2)
    with torch.no_grad():
        layer.positions.uniform_(-2, 2)
    x = torch.randn(1, 4, 7, 6)
    assert torch.equal(torch.jit.script(layer)(x), layer(x))
