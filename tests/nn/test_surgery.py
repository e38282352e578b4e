"""convert_to_acu and fuse_acu on whole models, and the normalized position gradient."""

import io
import logging

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from acuzoo.nn import (
    MAX_FUSED_KERNEL_SIZE,
    ActiveConv2d,
    convert_to_acu,
    fuse_acu,
    is_depthwise_conv,
    normalize_position_grad_,
    plan_acu_conversion,
)


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return timm.create_model("mobilenetv2_100", pretrained=False).eval()


def test_convert_to_acu_keeps_a_timm_models_output_and_adds_eq7_parameters(mobilenet):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = mobilenet(x)
    depthwise = [m for m in mobilenet.modules() if isinstance(m, nn.Conv2d) and is_depthwise_conv(m)]
    params_before = sum(p.numel() for p in mobilenet.parameters())
    converted = convert_to_acu(mobilenet)
    acus = [m for m in converted.modules() if isinstance(m, ActiveConv2d)]
    assert len(acus) == len(depthwise) == 17
    added = sum(p.numel() for p in converted.parameters()) - params_before
    assert added == sum(2 * (9 - 1) * m.out_channels for m in depthwise)
    with torch.no_grad():
        after = converted(x)
    assert (after - before).abs().max() < 1e-5


def test_convert_to_acu_strict_refuses_a_matching_conv_it_cannot_represent_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=0))
    with pytest.raises(ValueError, match=r"strict=True.*'1': padding \(0, 0\) is not 'same' padding"):
        convert_to_acu(model, predicate=lambda conv: True, strict=True)
    assert type(model[0]) is nn.Conv2d


def _with_a_conv2d_same() -> nn.Sequential:
    """A depthwise Conv2dSame of stride 2 (asymmetric padding at run time) beside a plain depthwise conv."""
    return nn.Sequential(Conv2dSame(4, 4, 3, stride=2, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))


def test_convert_to_acu_leaves_depthwise_convs_an_acu_cannot_represent_and_says_why(caplog):
    model = _with_a_conv2d_same()
    with caplog.at_level(logging.INFO, logger="acuzoo.nn.surgery"):
        convert_to_acu(model)
    assert type(model[0]) is Conv2dSame and isinstance(model[1], ActiveConv2d)
    assert "1 conv(s) converted to ACUs, 1 left as convs: '0': Conv2dSame overrides forward" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING


def test_the_conversion_plan_names_the_converted_and_the_left_convs_with_the_reason():
    model = _with_a_conv2d_same()
    plan = plan_acu_conversion(model)
    assert plan.converted == ["1"]
    assert list(plan.left) == ["0"] and "Conv2dSame" in plan.left["0"]
    assert type(model[1]) is nn.Conv2d  # planning changes nothing


def test_convert_to_acu_strict_refuses_to_leave_a_conv2d_same():
    with pytest.raises(ValueError, match=r"'0': Conv2dSame overrides forward .* cannot represent"):
        convert_to_acu(_with_a_conv2d_same(), strict=True)


def test_a_custom_predicate_picks_which_convs_convert():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    convert_to_acu(model, predicate=lambda conv: conv.in_channels == 3, position_groups=1)
    assert isinstance(model[0], ActiveConv2d) and model[0].position_groups == 1
    assert type(model[1]) is nn.Conv2d


def _trained_like_acu_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        ActiveConv2d(3, 8, 3, bias=True), nn.ReLU(), ActiveConv2d(8, 8, 3, 2, groups=8), nn.BatchNorm2d(8)
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ActiveConv2d):
                m.positions.uniform_(-2.2, 2.2)
    return model


def test_fuse_acu_replaces_every_acu_with_an_equal_conv():
    model = _trained_like_acu_model()
    x = torch.randn(2, 3, 17, 16)
    with torch.no_grad():
        before = model(x)
        fused = fuse_acu(model)
        after = fused(x)
    assert not any(isinstance(m, ActiveConv2d) for m in fused.modules())
    assert (after - before).abs().max() / before.abs().max() < 1e-5


def test_fused_models_export_to_torchscript_and_onnx():
    import onnxruntime as ort

    fused = fuse_acu(_trained_like_acu_model())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = fused(x)
    scripted = torch.jit.script(fused)
    assert torch.allclose(scripted(x), expected, atol=1e-6)
    buffer = io.BytesIO()
    torch.onnx.export(fused, (x,), buffer, input_names=["x"], dynamo=False)
    session = ort.InferenceSession(buffer.getvalue())
    (got,) = session.run(None, {"x": x.numpy()})
    assert abs(got - expected.numpy()).max() < 1e-4


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_fuse_acu_refuses_non_finite_positions_naming_the_module_and_replaces_nothing(value):
    model = _trained_like_acu_model()
    with torch.no_grad():
        model[2].positions[3, 1, 0] = value
    with pytest.raises(ValueError, match=r"fuse_acu: module '2': ActiveConv2d\(8, 8.*non-finite"):
        fuse_acu(model)
    assert isinstance(model[0], ActiveConv2d)


def test_fuse_acu_refuses_a_kernel_beyond_the_stated_size_naming_the_module():
    model = _trained_like_acu_model()
    with torch.no_grad():
        model[0].positions[0, 0, 1] = 1e6
    limit = f"max_kernel_size={MAX_FUSED_KERNEL_SIZE}"
    with pytest.raises(ValueError, match=rf"module '0': .*2000001 kernel .*beyond {limit}"):
        fuse_acu(model)


def test_fuse_acu_takes_a_larger_kernel_when_asked():
    model = _trained_like_acu_model()
    with torch.no_grad():
        model[0].positions[0, 0, 1] = 40.0
    assert fuse_acu(model, max_kernel_size=81)[0].kernel_size == (5, 81)


def test_fuse_acu_of_a_bare_layer_returns_the_conv():
    assert type(fuse_acu(ActiveConv2d(2, 2, 3))) is nn.Conv2d


def test_normalized_position_gradient_has_unit_norm_per_synapse_and_keeps_zeros():
    layer = ActiveConv2d(4, 4, 3, groups=2)
    layer.positions.grad = torch.randn_like(layer.positions) * 7
    layer.positions.grad[1, 3] = 0
    normalize_position_grad_(layer)
    norms = layer.positions.grad.norm(dim=-1)
    assert torch.allclose(norms[0], torch.ones(8)) and norms[1, 3] == 0
    assert torch.allclose(norms[1, [0, 1, 2, 4, 5, 6, 7]], torch.ones(7))


def test_normalized_position_gradient_accepts_parameter_lists_and_checks_their_shape():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"position gradients must have shape \(\.\.\., 2\)"):
        normalize_position_grad_([p])
