"""Zoo-wide behaviour, for every acuzoo model (the CIFAR families included once registered):
listing, pretrained configs, names, bad input, and fusing ACUs for deployment."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import pytest
import timm
import torch

import acuzoo
from acuzoo.models import list_models, resolve_model_name
from acuzoo.models._manifest import CheckpointError
from acuzoo.nn import ActiveConv2d

ZOO = list_models()
FAMILIES = {timm.models.model_entrypoint(name).__module__ for name in ZOO}
ACU_MODELS = [name for name in ZOO if "acu" in name]
CFG_FIELDS = (
    "input_size",
    "mean",
    "std",
    "crop_pct",
    "interpolation",
    "first_conv",
    "classifier",
    "pool_size",
    "license",
    "tag",
)


def _smallest_per_family(names: list[str]) -> list[str]:
    """Of each model file, its model with the fewest parameters (counted on the meta device)."""
    chosen: dict[str, tuple[int, str]] = {}
    for name in names:
        size = sum(p.numel() for p in timm.create_model(name, device="meta").parameters())
        family = timm.models.model_entrypoint(name).__module__
        chosen[family] = min(chosen.get(family, (size, name)), (size, name))
    return sorted(name for _, name in chosen.values())


EXPORTED = _smallest_per_family(ACU_MODELS)


def _perturbed(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """An eval-mode ACU model whose positions moved off the grid, and a small input for it."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, ActiveConv2d):
                layer.positions.add_(torch.empty_like(layer.positions).uniform_(-0.7, 0.7))
    size = min(model.default_cfg["input_size"][-1], 48)
    return model, torch.randn(1, 3, size, size)


def test_list_models_lists_every_family_of_the_zoo() -> None:
    expected = {
        f"acuzoo.models.{f}" for f in ("cifar_resnet", "cifar_resnext", "inception_bn", "mobilenetv2", "xception")
    }
    assert expected == FAMILIES


def test_list_models_is_reachable_as_acuzoo_models_list_models_and_filters() -> None:
    assert acuzoo.models.list_models("mobilenetv2_acu*") == [
        "mobilenetv2_acu_080",
        "mobilenetv2_acu_100",
        "mobilenetv2_acu_120",
        "mobilenetv2_acu_140",
    ]
    assert set(ACU_MODELS) <= set(timm.list_models("*acu*"))


# --- Short names are timm's deprecation aliases: they build their target and are not listed ---


def test_the_zoo_has_the_short_name_mobilenetv2_acu_for_the_width_one_network() -> None:
    assert acuzoo.models.zoo_aliases() == {"mobilenetv2_acu": "mobilenetv2_acu_100"}


@pytest.mark.parametrize(("alias", "target"), sorted(acuzoo.models.zoo_aliases().items()))
def test_an_alias_is_a_timm_model_that_timm_does_not_list(alias: str, target: str) -> None:
    assert timm.is_model(alias) and acuzoo.models.is_zoo_model(alias)
    assert alias not in timm.list_models() and alias not in ZOO
    assert not any(n.split(".")[0] == alias for n in timm.list_pretrained())
    assert timm.models.get_deprecated_models()[alias] == target


@pytest.mark.parametrize(("alias", "target"), sorted(acuzoo.models.zoo_aliases().items()))
def test_an_alias_builds_its_target_with_the_targets_config(alias: str, target: str) -> None:
    with pytest.warns(UserWarning, match=f"Mapping deprecated model name {alias} to current {target}"):
        model = timm.create_model(alias, device="meta")
    reference = timm.create_model(target, device="meta")
    assert model.pretrained_cfg == reference.pretrained_cfg
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (model, reference)]
    assert shapes[0] == shapes[1]


def test_an_alias_with_a_tag_loads_that_tags_published_weights() -> None:
    with pytest.warns(UserWarning, match="Mapping deprecated model name"):
        alias = timm.create_model("mobilenetv2_acu.fmnist", pretrained=True)
    published = timm.create_model("mobilenetv2_acu_100.fmnist", pretrained=True)
    assert alias.pretrained_cfg["architecture"] == "mobilenetv2_acu_100" and alias.pretrained_cfg["tag"] == "fmnist"
    for (name, a), b in zip(alias.state_dict().items(), published.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_an_alias_without_a_tag_asks_for_its_targets_default_tag_as_the_target_does() -> None:
    # The default tag is in1k (no published file): the same refusal, naming the published tag.
    errors = []
    for name in ("mobilenetv2_acu", "mobilenetv2_acu_100"):
        with pytest.raises(CheckpointError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timm.create_model(name, pretrained=True)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "mobilenetv2_acu_100.fmnist" in errors[0]


def test_resolve_model_name_turns_an_alias_into_its_target() -> None:
    assert resolve_model_name("mobilenetv2_acu") == "mobilenetv2_acu_100"
    assert resolve_model_name("mobilenetv2_acu.fmnist") == "mobilenetv2_acu_100.fmnist"


@pytest.mark.parametrize("name", list_models(include_tags=True))
def test_every_model_has_a_complete_pretrained_config(name: str) -> None:
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    missing = [f for f in CFG_FIELDS if cfg.get(f) in (None, "", ())]
    assert not missing, f"{name}: {missing}"
    assert cfg["tag"] in ("in1k", "cifar10", "fmnist")  # fmnist: the published checkpoints
    assert cfg["num_classes"] == (1000 if cfg["tag"] == "in1k" else 10)


def test_every_model_has_a_tagged_config() -> None:
    assert {name.split(".")[0] for name in list_models(include_tags=True)} == set(ZOO)


def test_zoo_names_do_not_shadow_timm_models() -> None:
    timm_only = subprocess.run(
        [sys.executable, "-c", "import timm; print('\\n'.join(timm.list_models()))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(timm_only) > 1000
    assert set(ZOO).isdisjoint(timm_only)


@pytest.mark.parametrize("name", ZOO)
def test_unknown_keyword_argument_raises_type_error(name: str) -> None:
    with pytest.raises(TypeError):
        timm.create_model(name, not_a_model_arg=1)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("bad", [0, -3])
def test_in_chans_out_of_range_raises_value_error_naming_the_range(name: str, bad: int) -> None:
    with pytest.raises(ValueError, match=r"in_chans.*\[?1"):
        timm.create_model(name, in_chans=bad)


@pytest.mark.parametrize("name", ZOO)
def test_negative_num_classes_raises_value_error_naming_the_range(name: str) -> None:
    with pytest.raises(ValueError, match=r"num_classes.*0"):
        timm.create_model(name, num_classes=-1)


def test_resolve_model_name_accepts_zoo_names_with_and_without_tag() -> None:
    assert resolve_model_name("xception_acu") == "xception_acu"
    assert resolve_model_name("mobilenetv2_acu_140.in1k") == "mobilenetv2_acu_140.in1k"


def test_a_width_that_does_not_exist_names_the_widths_that_do() -> None:
    with pytest.raises(ValueError, match="unknown acuzoo model 'mobilenetv2_acu_090'") as info:
        resolve_model_name("mobilenetv2_acu_090")
    assert "mobilenetv2_acu_080" in str(info.value) and "mobilenetv2_acu_100" in str(info.value)


def test_an_unknown_tag_names_the_valid_tags() -> None:
    with pytest.raises(ValueError, match=r"no tag 'in22k'.*xception_conv\.in1k"):
        resolve_model_name("xception_conv.in22k")


def test_a_timm_model_is_not_a_zoo_model() -> None:
    with pytest.raises(ValueError, match="unknown acuzoo model 'resnet50'.*valid models: cifar_"):
        resolve_model_name("resnet50")


def test_timm_itself_refuses_unknown_names() -> None:
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("mobilenetv2_acu_090")


@pytest.mark.parametrize("name", ACU_MODELS)
def test_fused_model_gives_the_same_logits(name: str) -> None:
    model, x = _perturbed(name)
    with torch.no_grad():
        expected = model(x)
        fused = acuzoo.fuse_acu(model)
        assert not any(isinstance(m, ActiveConv2d) for m in fused.modules())
        error = (fused(x) - expected).abs().max() / expected.abs().max()
    assert error < 1e-4


@pytest.mark.parametrize("name", EXPORTED)
def test_fused_model_exports_to_onnx_and_onnxruntime_agrees(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = _perturbed(name)
    fused = acuzoo.fuse_acu(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, (x,), buffer, dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(buffer.getvalue()).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = fused(x)
    assert (torch.from_numpy(got) - expected).abs().max() / expected.abs().max() < 1e-4


@pytest.mark.parametrize("name", EXPORTED)
def test_fused_model_compiles_to_torchscript(name: str) -> None:
    model, x = _perturbed(name)
    fused = acuzoo.fuse_acu(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fused)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), fused(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mobilenetv2_acu_080", "xception_acu", "inception_bn_acu"])
def test_no_weight_decay_lists_every_acu_position(name: str) -> None:
    model = timm.create_model(name)
    positions = {n for n, p in model.named_parameters() if n.endswith("positions")}
    assert positions and model.no_weight_decay() == positions


@pytest.mark.parametrize("name", ["mobilenetv2_conv_080", "xception_conv", "inception_bn_conv"])
def test_drop_rate_sets_the_head_dropout(name: str) -> None:
    assert timm.create_model(name, drop_rate=0.3).head_drop.p == 0.3
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\)"):
        timm.create_model(name, drop_rate=1.5)


@pytest.mark.parametrize("name", ["mobilenetv2_acu_080", "xception_acu", "inception_bn_acu"])
def test_group_matcher_puts_every_parameter_in_a_stem_or_block_group(name: str) -> None:
    from timm.models._manipulate import group_parameters

    model = timm.create_model(name)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    grouped = {n for names in groups.values() for n in names}
    assert len(groups) > 2
    assert grouped == {n for n, _ in model.named_parameters()}
