"""Inception-BN (Table 6): GoogLeNet with BN and true 5x5 branches, and its replacement by
widened (1x1 conv)-(3x3 depthwise ACU) blocks."""

from __future__ import annotations

import timm
import torch
from torch import nn

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.models.inception_bn import MODULES, AcuBlock, Inception
from acuzoo.nn import ActiveConv2d


def test_conv_model_has_nine_inception_modules_with_true_5x5_branches() -> None:
    model = timm.create_model("inception_bn_conv")
    modules = [m for m in model.modules() if isinstance(m, Inception)]
    assert len(modules) == 9
    assert all(m.branch5[1].conv.kernel_size == (5, 5) for m in modules)


def test_every_relu_directly_follows_a_batch_norm() -> None:
    model = timm.create_model("inception_bn_conv")
    for parent in model.modules():
        children = list(parent.children())
        for before, layer in zip(children, children[1:]):
            if isinstance(layer, nn.ReLU):
                assert isinstance(before, nn.BatchNorm2d)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    )


def test_there_are_no_auxiliary_classifiers() -> None:
    for name in ("inception_bn_conv", "inception_bn_acu"):
        model = timm.create_model(name)
        assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]


def test_acu_model_replaces_every_module_by_a_1x1_conv_then_a_depthwise_acu() -> None:
    model = timm.create_model("inception_bn_acu")
    blocks = [m for m in model.modules() if isinstance(m, AcuBlock)]
    assert not any(isinstance(m, Inception) for m in model.modules())
    assert len(blocks) == 9
    for block in blocks:
        assert block.conv_pw.kernel_size == (1, 1)
        assert isinstance(block.conv_dw, ActiveConv2d)
        assert block.conv_dw.groups == block.conv_dw.in_channels == block.conv_pw.out_channels


def test_acu_blocks_are_the_modules_widened_by_1_4_except_the_last_keeps_1024() -> None:
    model = timm.create_model("inception_bn_acu")
    widths = [m.conv_pw.out_channels for m in model.modules() if isinstance(m, AcuBlock)]
    module_widths = [c1 + c3 + c5 + cp for _, c1, _, c3, _, c5, cp in MODULES.values()]
    assert widths[-1] == 1024 == model.num_features
    for ours, theirs in zip(widths[:-1], module_widths[:-1]):
        assert ours % 8 == 0 and abs(ours - 1.4 * theirs) < 8


def test_both_models_classify_small_inputs() -> None:
    for name in ("inception_bn_conv", "inception_bn_acu"):
        model = timm.create_model(name, num_classes=7).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 48, 48)).shape == (1, 7)
