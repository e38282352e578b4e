"""timm's model API behaves the same in every zoo family: one implementation (``_zoo_api.ZooModel``)
with the family supplying only its layout. Each test runs on one ACU variant per family (its
smallest) and, where the rule concerns ACUs, on the family's conv twin too.

The weight-decay rule: ``no_weight_decay()`` names exactly the ACU positions (every
``ActiveConv2d.positions``, by its full parameter name), nothing else. Norm and bias parameters are
not listed: timm's optimizer factory exempts every parameter of one dimension or less on its own,
so with timm's ``param_groups_weight_decay`` the undecayed set is the positions plus every
0-/1-D parameter.
"""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
import torch.utils.checkpoint
from timm.models._manipulate import group_parameters
from timm.optim import param_groups_weight_decay

from acuzoo.models import list_models
from acuzoo.models._zoo_api import ZooModel
from acuzoo.nn import ActiveConv2d

# The input side each family needs for every tap to keep a few pixels.
INPUT_SIDE = {"cifar_resnet": 32, "cifar_resnext": 32, "mobilenetv2": 64, "xception": 96, "inception_bn": 64}


def _family(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rpartition(".")[2]


def _smallest_per_family(acu: bool) -> list[str]:
    chosen: dict[str, tuple[int, str]] = {}
    for name in list_models():
        if ("acu" in name) != acu:
            continue
        size = sum(p.numel() for p in timm.create_model(name, device="meta").parameters())
        chosen[_family(name)] = min(chosen.get(_family(name), (size, name)), (size, name))
    return sorted(name for _, name in chosen.values())


ACU_VARIANTS = _smallest_per_family(acu=True)
CONV_VARIANTS = _smallest_per_family(acu=False)


def _model(name: str) -> ZooModel:
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _images(name: str, batch: int = 1) -> torch.Tensor:
    side = INPUT_SIDE[_family(name)]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


class CheckpointCalls:
    """Counts ``torch.utils.checkpoint.checkpoint`` calls (timm's ``checkpoint_seq`` makes one per
    checkpointed segment)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = torch.utils.checkpoint.checkpoint

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)


def test_every_family_is_covered():
    families = {_family(name) for name in list_models()}
    assert {_family(n) for n in ACU_VARIANTS} == families == set(INPUT_SIDE)


@pytest.mark.parametrize("name", ACU_VARIANTS + CONV_VARIANTS)
def test_every_family_implements_timms_api_through_the_one_base_class(name):
    model = timm.create_model(name, device="meta")
    assert isinstance(model, ZooModel)
    shared = {
        "forward_features",
        "forward_intermediates",
        "prune_intermediate_layers",
        "reset_classifier",
        "set_grad_checkpointing",
        "group_matcher",
        "no_weight_decay",
    }
    family_classes = type(model).__mro__[: type(model).__mro__.index(ZooModel)]
    redefined = {f"{cls.__name__}.{attr}" for cls in family_classes for attr in shared & set(vars(cls))}
    assert not redefined, "a family redefines the shared API"


# --- no_weight_decay ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_no_weight_decay_names_exactly_the_acu_positions(name):
    model = timm.create_model(name, device="meta")
    positions = {f"{m_name}.positions" for m_name, m in model.named_modules() if isinstance(m, ActiveConv2d)}
    assert positions and model.no_weight_decay() == positions


@pytest.mark.parametrize("name", CONV_VARIANTS)
def test_a_conv_twin_names_nothing(name):
    assert timm.create_model(name, device="meta").no_weight_decay() == set()


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_timms_optimizer_groups_leave_positions_norms_and_biases_undecayed(name):
    model = timm.create_model(name, device="meta")
    groups = param_groups_weight_decay(model, 1e-4, no_weight_decay_list=model.no_weight_decay())
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    expected = {id(p) for n, p in model.named_parameters() if p.ndim <= 1 or n in model.no_weight_decay()}
    assert undecayed == expected


# --- grad checkpointing --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_forward_intermediates_checkpoints_each_trunk_module_and_gives_the_same_values(name, monkeypatch):
    model, x = _model(name), _images(name)
    plain_final, plain_taps = model.forward_intermediates(x)
    calls = CheckpointCalls(monkeypatch)
    model.set_grad_checkpointing(True)
    final, taps = model.forward_intermediates(x)
    assert calls.count == len(model.trunk())
    torch.testing.assert_close(final, plain_final, rtol=0, atol=0)
    for tap, plain in zip(taps, plain_taps, strict=True):
        torch.testing.assert_close(tap, plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_forward_intermediates_gives_the_same_gradients_with_checkpointing(name):
    model, x = _model(name), _images(name)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        final, taps = model.forward_intermediates(x)
        (final.square().mean() + sum(t.mean() for t in taps)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_forward_features_checkpoints_each_trunk_module(name, monkeypatch):
    model, x = _model(name), _images(name)
    with torch.no_grad():
        plain = model.forward_features(x)
    calls = CheckpointCalls(monkeypatch)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), plain, rtol=0, atol=0)
    assert calls.count == len(model.trunk())


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_stop_early_checkpoints_only_up_to_the_last_requested_tap(name, monkeypatch):
    model, x = _model(name), _images(name)
    with torch.no_grad():
        plain = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        calls = CheckpointCalls(monkeypatch)
        model.set_grad_checkpointing(True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], plain[0], rtol=0, atol=0)
    assert calls.count == model.feature_ends[1]


# --- features ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_features_only_gives_every_tap_as_forward_intermediates_does(name):
    model, x = _model(name), _images(name)
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        got = features(x)
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert features.feature_info.channels() == [t["num_chs"] for t in model.feature_info]
    assert features.feature_info.reduction() == [t["reduction"] for t in model.feature_info]
    assert [f.shape[1] for f in got] == features.feature_info.channels()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_pruning_at_a_tap_makes_the_features_end_there_without_a_head(name):
    model, x = _model(name), _images(name)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([2]) == [2]
    with torch.no_grad():
        tap = model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        torch.testing.assert_close(pruned.forward_features(x), tap, rtol=0, atol=0)
        assert pruned(x).shape == tap.shape  # no pooling, no classifier
    assert pruned.num_features == model.feature_info[2]["num_chs"] and pruned.num_classes == 0


# --- head and groups -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_reset_classifier_keeps_device_dtype_and_mode_and_checks_the_count(name):
    model = timm.create_model(name).to(torch.float64).train()
    model.reset_classifier(7)
    classifier = model.get_classifier()
    assert classifier.out_features == 7 and classifier.weight.dtype == torch.float64 and classifier.training
    assert model.num_classes == 7
    with pytest.raises(ValueError, match=r"num_classes must be an int in \[0, "):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", ACU_VARIANTS)
def test_group_matcher_orders_stem_first_and_the_classifier_last(name):
    model = timm.create_model(name, device="meta")
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        ordered = [groups[k] for k in sorted(groups)]
        assert sorted(n for g in ordered for n in g) == sorted(n for n, _ in model.named_parameters())
        classifier = {id(p) for p in model.get_classifier().parameters()}
        assert {n for n, p in model.named_parameters() if id(p) in classifier} == set(ordered[-1])
        assert all(re.match(model.stem_pattern, n) for n in ordered[0])
        assert len(ordered) > 2
