"""MobileNetV2 (Table 8): structure of the conv and ACU variants, widths, timm weight layout."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.models.mobilenetv2 import MobileNetV2
from acuzoo.nn import ActiveConv2d


def _depthwise_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def _load_conv_weights(acu_model: nn.Module, conv_model: nn.Module) -> None:
    """Copy a conv twin's weights into an ACU model (ACU weights are (C_out, C_in/g, K))."""
    state = acu_model.state_dict()
    for name, value in conv_model.state_dict().items():
        state[name] = value.reshape(state[name].shape)
    acu_model.load_state_dict(state)


def test_acu_model_replaces_every_depthwise_conv_by_a_depthwise_acu() -> None:
    model = timm.create_model("mobilenetv2_acu_100")
    acus = [m for m in model.modules() if isinstance(m, ActiveConv2d)]
    assert len(acus) == 17  # one per inverted residual block
    assert all(a.groups == a.in_channels == a.out_channels == a.position_groups for a in acus)
    assert _depthwise_convs(model) == []


def test_conv_baseline_has_no_acu() -> None:
    model = timm.create_model("mobilenetv2_conv_100")
    assert not any(isinstance(m, ActiveConv2d) for m in model.modules())
    assert len(_depthwise_convs(model)) == 17


@pytest.mark.parametrize(("name", "head"), [("mobilenetv2_conv_080", 1280), ("mobilenetv2_conv_140", 1792)])
def test_head_conv_scales_only_above_width_one(name: str, head: int) -> None:
    assert timm.create_model(name).num_features == head


def test_channel_counts_are_multiples_of_eight() -> None:
    model = timm.create_model("mobilenetv2_conv_120")
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_acu_model_at_init_computes_what_its_conv_twin_computes() -> None:
    torch.manual_seed(0)
    conv = timm.create_model("mobilenetv2_conv_080").eval()
    acu = timm.create_model("mobilenetv2_acu_080").eval()
    _load_conv_weights(acu, conv)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(acu(x), conv(x), rtol=1e-4, atol=1e-5)


def test_conv_baseline_holds_timm_mobilenetv2_100_weights_as_they_are() -> None:
    """Same parameter names and shapes as timm's mobilenetv2_100, and the same function."""
    torch.manual_seed(0)
    theirs = timm.create_model("mobilenetv2_100").eval()
    ours = timm.create_model("mobilenetv2_conv_100").eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every name and shape agrees
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_width_outside_the_valid_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"width must be in \(0, 4\]"):
        MobileNetV2(width=0)


def test_registered_widths_are_fixed_by_the_name() -> None:
    with pytest.raises(TypeError):
        timm.create_model("mobilenetv2_conv_100", width=0.5)
