"""The CIFAR ResNet-29 family behaves like any timm model, and its ACU models fuse and export.

Cheap checks (registration, config, forward shape) run on every model of the family. The
timm API behaviours run on the base model (``cifar_resnet29_conv3``) or, where they concern
ACUs, the shared-position ACU model (``cifar_resnet29_acu``): the API code is one class, the
variants differ only in the blocks' spatial conv. Fusion runs on every ACU model of the family,
with positions moved off the grid at random; TorchScript and ONNX export of the fused model
run on one model per kind of ACU (shared positions, depthwise), see EXPORT_NAMES.
"""

import copy
import functools
import io
import sys
from functools import partial

import onnxruntime
import pytest
import timm
import torch
from torch import nn

import acuzoo
import acuzoo.nn.active_conv as active_conv_module
from acuzoo.nn import ActiveConv2d
from acuzoo.ops import active_conv2d

NAMES = sorted(
    ["cifar_resnet29_conv3", "cifar_resnet29_acu", "cifar_resnet29_conv7", "cifar_resnet29_d2"]
    + [f"cifar_resnet29_{g}_{c}" for g in ("16x4d", "x4d", "x2d", "x1d") for c in ("conv3", "conv5", "acu")]
    + ["cifar_resnet29_x1d_acu_share"]
)
ACU_NAMES = [n for n in NAMES if "_acu" in n]
# Fused, every ACU model is an ordinary conv net of this one block type; export runs on the
# two kinds of ACU it can hold: one shared position set (P = 1) and depthwise (P = C).
EXPORT_NAMES = ["cifar_resnet29_acu", "cifar_resnet29_x1d_acu"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    # 32x32 inputs at batch 1-2: one thread is faster than two, and does not stall in OpenMP
    # barriers when the machine is busy (measured 30-100x slower with two on a loaded box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 2, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, 32, 32, generator=torch.Generator().manual_seed(0))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def base() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet29_conv3").eval()


# --- registration and pretrained config -------------------------------------------------


def test_timm_lists_exactly_the_resnet29_family():
    assert timm.list_models("cifar_resnet29*") == NAMES


def test_names_do_not_shadow_timm_models():
    # `import timm` imports every timm model module, so a clash would show as an attribute.
    timm_modules = [m for n, m in sys.modules.items() if n.startswith("timm.models.") and m is not None]
    clashes = [(n, m.__name__) for n in NAMES for m in timm_modules if callable(getattr(m, n, None))]
    assert clashes == []


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_is_complete_and_tagged_cifar10(name):
    published = name in ("cifar_resnet29_conv3", "cifar_resnet29_acu")  # checkpoints/manifest.json
    assert timm.list_models(name, include_tags=True) == [f"{name}.cifar10"] + [f"{name}.fmnist"] * published
    cfg = timm.create_model(name, device="meta").pretrained_cfg
    assert cfg["tag"] == "cifar10"
    assert cfg["url"] == "" and not cfg.get("file") and not cfg.get("hf_hub_id")
    assert cfg["num_classes"] == 10
    assert cfg["input_size"] == (3, 32, 32) and cfg["pool_size"] == (8, 8)
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert (cfg["mean"], cfg["std"]) == (CIFAR10_MEAN, CIFAR10_STD)
    assert (cfg["first_conv"], cfg["classifier"], cfg["license"]) == ("stem", "head.fc", "mit")


def test_cfg_first_conv_and_classifier_name_real_weights(base):
    state = base.state_dict()
    assert f"{base.pretrained_cfg['first_conv']}.weight" in state
    assert f"{base.pretrained_cfg['classifier']}.weight" in state


# --- forward and constructor arguments ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_ten_finite_logits_per_image(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        logits = model(images())
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_num_classes_zero_returns_pooled_features():
    model = timm.create_model("cifar_resnet29_conv3", num_classes=0).eval()
    with torch.no_grad():
        assert model(images()).shape == (2, model.num_features) == (2, 512)


def test_empty_global_pool_returns_the_feature_map():
    model = timm.create_model("cifar_resnet29_conv3", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model(images()).shape == (2, 512, 8, 8)


def test_in_chans_one_takes_grayscale_images():
    model = timm.create_model("cifar_resnet29_conv3", in_chans=1).eval()
    assert model.stem.in_channels == 1
    with torch.no_grad():
        assert model(images(chans=1)).shape == (2, 10)


@pytest.mark.parametrize("in_chans", [0, -3])
def test_in_chans_below_one_is_refused_naming_the_range(in_chans):
    with pytest.raises(ValueError, match=r"in_chans must be an int in \[1, 64\]"):
        timm.create_model("cifar_resnet29_conv3", in_chans=in_chans)


def test_negative_num_classes_is_refused_naming_the_range():
    with pytest.raises(ValueError, match=r"num_classes must be an int in \[0, "):
        timm.create_model("cifar_resnet29_conv3", num_classes=-1)


def test_unknown_keyword_argument_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model("cifar_resnet29_conv3", not_a_model_arg=1)


def test_unknown_conv_type_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"conv_type must be one of \('conv', 'acu'\)"):
        timm.create_model("cifar_resnet29_conv3", conv_type="deformable")


def test_position_groups_with_ordinary_convs_is_refused():
    with pytest.raises(ValueError, match="position_groups applies to conv_type='acu' only"):
        timm.create_model("cifar_resnet29_conv3", position_groups=1)


def test_drop_rate_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\)"):
        timm.create_model("cifar_resnet29_conv3", drop_rate=1.5)


def test_drop_rate_drops_pooled_features_in_training_only():
    model = timm.create_model("cifar_resnet29_conv3", drop_rate=0.5)
    features = torch.ones(2, 512, 8, 8)
    model.train()
    assert not torch.equal(model.forward_head(features), model.forward_head(features))
    model.eval()
    assert torch.equal(model.forward_head(features), model.forward_head(features))


# --- classifier -------------------------------------------------------------------------------


def test_reset_classifier_sets_the_number_of_outputs():
    model = timm.create_model("cifar_resnet29_conv3").eval()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(images()).shape == (2, 7)


def test_reset_classifier_keeps_the_pool_unless_given_one():
    model = timm.create_model("cifar_resnet29_conv3", global_pool="max").eval()
    x = images()
    with torch.no_grad():
        before = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), before)
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 512, 8, 8)


def test_reset_classifier_refuses_negative_classes(base):
    with pytest.raises(ValueError, match=r"num_classes must be an int in \[0, "):
        copy.deepcopy(base).reset_classifier(-2)


def test_forward_head_pre_logits_gives_head_hidden_size(base):
    with torch.no_grad():
        pooled = base.forward_head(base.forward_features(images()), pre_logits=True)
    assert pooled.shape == (2, base.head_hidden_size) == (2, 512)


# --- features ---------------------------------------------------------------------------------


def test_features_only_returns_stem_and_stage_features():
    model = timm.create_model("cifar_resnet29_conv3", features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    with torch.no_grad():
        features = model(images())
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 32, 32),
        (2, 128, 32, 32),
        (2, 256, 16, 16),
        (2, 512, 8, 8),
    ]


def test_features_only_out_indices_selects_features():
    model = timm.create_model("cifar_resnet29_acu", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in model(images())] == [128, 512]


def test_features_only_getter_matches_forward_intermediates(base):
    torch.manual_seed(0)  # the seed of the `base` fixture: same weights
    getter = timm.create_model("cifar_resnet29_conv3", features_only=True, feature_cls="getter").eval()
    x = images()
    with torch.no_grad():
        expected = base.forward_intermediates(x, intermediates_only=True)
        for actual, tap in zip(getter(x), expected, strict=True):
            torch.testing.assert_close(actual, tap)


def test_forward_intermediates_final_output_is_forward_features(base):
    x = images()
    with torch.no_grad():
        final, taps = base.forward_intermediates(x)
        torch.testing.assert_close(final, base.forward_features(x))
    assert len(taps) == len(base.feature_info) == 4


def test_forward_intermediates_norm_applies_the_final_bn_relu_to_the_last_tap(base):
    x = images()
    with torch.no_grad():
        raw = base.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        normed = base.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, base.norm(raw))
    assert (normed >= 0).all() and (raw < 0).any()


def test_forward_intermediates_stop_early_gives_the_same_taps(base):
    x = images()
    with torch.no_grad():
        full = base.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        early = base.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    for a, b in zip(early, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_prune_intermediate_layers_ends_the_features_at_the_tap(base):
    x = images()
    pruned = copy.deepcopy(base)
    with torch.no_grad():
        tap = base.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        assert pruned.prune_intermediate_layers([2]) == [2]
        torch.testing.assert_close(pruned.forward_features(x), tap, rtol=0, atol=0)
        assert pruned(x).shape == (2, 256, 16, 16)  # head removed
    assert len(pruned.stages) == 2 and pruned.num_features == 256


def test_prune_last_index_without_head_keeps_the_logits(base):
    x = images()
    pruned = copy.deepcopy(base)
    pruned.prune_intermediate_layers([3], prune_head=False)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), base(x), rtol=0, atol=0)


# --- training helpers -------------------------------------------------------------------------


def test_grad_checkpointing_keeps_output_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet29_conv3").eval()
    x = images(batch=1)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), model.stem.weight.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_group_matcher_orders_stem_then_each_block_then_head(base):
    from timm.models._manipulate import group_parameters

    groups = group_parameters(base, base.group_matcher(coarse=False))
    ordered = [groups[k] for k in sorted(groups)]
    assert sorted(n for group in ordered for n in group) == sorted(n for n, _ in base.named_parameters())
    assert ordered[0] == ["stem.weight"]
    assert ordered[-1] == ["head.fc.weight", "head.fc.bias"]
    blocks = [{".".join(n.split(".")[:3]) for n in group if n.startswith("stages.")} for group in ordered[1:-1]]
    assert blocks == [{f"stages.{s}.{b}"} for s in range(3) for b in range(3)]
    assert "norm.weight" in ordered[-2]  # the final norm goes with the last block
    coarse = group_parameters(base, base.group_matcher(coarse=True))
    assert len(coarse) == 1 + 3 + 1  # stem, three stages, what follows them


def test_no_weight_decay_lists_exactly_the_acu_positions():
    model = timm.create_model("cifar_resnet29_x1d_acu", device="meta")
    positions = {n for n, p in model.named_parameters() if p is not None and n.endswith("positions")}
    assert model.no_weight_decay() == positions and len(positions) == 9
    assert timm.create_model("cifar_resnet29_x1d_conv3", device="meta").no_weight_decay() == set()


def test_frozen_positions_get_no_gradient_while_weights_train():
    """ACU-Fixed (Table 2): positions frozen through requires_grad."""
    model = timm.create_model("cifar_resnet29_acu")
    for p in acuzoo.position_parameters(model):
        p.requires_grad_(False)
    model(images(batch=1)).logsumexp(1).mean().backward()
    acus = [m for m in model.modules() if isinstance(m, ActiveConv2d)]
    assert len(acus) == 9
    assert all(m.positions.grad is None and m.weight.grad is not None for m in acus)


def test_acu_models_start_equal_to_their_conv_twins():
    """Lemma 1: at init an ACU computes its grid conv, so copying the weights gives the same logits."""
    acu = timm.create_model("cifar_resnet29_16x4d_acu").eval()
    conv = timm.create_model("cifar_resnet29_16x4d_conv3").eval()
    state = {k: v.reshape(conv.state_dict()[k].shape) for k, v in acu.state_dict().items() if "positions" not in k}
    conv.load_state_dict(state)
    x = images()
    with torch.no_grad():
        assert relative_error(acu(x), conv(x)) < 1e-5


# --- fusion and export of the ACU models ------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def release_perturbed_models():
    yield
    perturbed.cache_clear()  # the cached models are large; free them with the module


@functools.cache
def perturbed(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(ACU model with positions moved off the grid, its fused copy, input), built once."""
    torch.manual_seed(1)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for p in acuzoo.position_parameters(model):
            p.add_(torch.empty_like(p).uniform_(-1.0, 1.0))
    fused = acuzoo.fuse_acu(copy.deepcopy(model)).eval()
    return model, fused, images(batch=1)


@pytest.mark.parametrize("name", ACU_NAMES)
def test_fused_model_gives_the_acu_models_logits(name, monkeypatch):
    model, fused, x = perturbed(name)
    # Run the ACUs by interpolating their inputs (bilinear columns), so the reference is not the
    # dense extrapolated kernel that fusion also builds.
    monkeypatch.setattr(active_conv_module, "active_conv2d", partial(active_conv2d, path="columns"))
    with torch.no_grad():
        expected = model(x)
        actual = fused(x)
    assert not any(isinstance(m, ActiveConv2d) for m in fused.modules())
    # Moved synapses need kernels wider than 3x3: the fused model is not the grid conv.
    assert max(b.conv2.kernel_size[0] for s in fused.stages for b in s) > 3
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_fused_model_exports_to_torchscript(name):
    _, fused, x = perturbed(name)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(fused), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert relative_error(loaded(x), fused(x)) < 1e-6


@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_fused_model_exports_to_onnx(name):
    _, fused, x = perturbed(name)
    buffer = io.BytesIO()
    torch.onnx.export(fused, (x,), buffer, dynamo=False, input_names=["images"], output_names=["logits"])
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(logits), fused(x)) < 1e-4
