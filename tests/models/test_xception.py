"""Xception (Table 7): only the last depthwise conv of each residual block is an ACU; the conv
variant is Chollet's network, holding timm's legacy_xception weights."""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.models.xception import Block, SeparableConv2d
from acuzoo.nn import ActiveConv2d


def _from_legacy_name(name: str) -> str:
    """timm legacy_xception parameter name -> ours (one Sequential level deeper)."""
    if match := re.match(r"block(\d+)\.(.*)", name):
        return f"blocks.{match.group(1)}.{match.group(2)}"
    if re.match(r"(conv|bn)[12]\.", name):
        return f"blocks.0.{name}"
    if re.match(r"(conv|bn)[34]\.", name):
        return f"blocks.13.{name}"
    return name.replace("fc.", "classifier.")


def test_acus_are_exactly_the_last_depthwise_conv_of_each_residual_block() -> None:
    model = timm.create_model("xception_acu")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    last_separables = [[m for m in b.rep if isinstance(m, SeparableConv2d)][-1] for b in blocks]
    acus = [m for m in model.modules() if isinstance(m, ActiveConv2d)]
    assert len(blocks) == 12
    assert [s.conv1 for s in last_separables] == acus
    assert all(a.groups == a.in_channels == a.position_groups for a in acus)


def test_conv_variant_keeps_every_depthwise_conv() -> None:
    model = timm.create_model("xception_conv")
    assert not any(isinstance(m, ActiveConv2d) for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules()) == 34


def test_conv_variant_holds_timm_legacy_xception_weights() -> None:
    """Every legacy_xception tensor has a place of the same shape, and the function is the same."""
    torch.manual_seed(0)
    theirs = timm.create_model("legacy_xception").eval()
    ours = timm.create_model("xception_conv").eval()
    ours.load_state_dict({_from_legacy_name(k): v for k, v in theirs.state_dict().items()})
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_acu_variant_at_init_computes_what_the_conv_variant_computes() -> None:
    torch.manual_seed(0)
    conv, acu = timm.create_model("xception_conv").eval(), timm.create_model("xception_acu").eval()
    state = acu.state_dict()
    state.update({k: v.reshape(state[k].shape) for k, v in conv.state_dict().items()})
    acu.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(acu(x), conv(x), rtol=1e-4, atol=1e-4)


def test_unpadded_stem_shrinks_224_to_a_7x7_feature_map() -> None:
    assert timm.create_model("xception_conv").default_cfg["pool_size"] == (7, 7)
    model = timm.create_model("xception_conv", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model.blocks[0](torch.zeros(1, 3, 224, 224)).shape[-1] == 109
