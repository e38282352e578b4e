"""Starting a model from a file's weights: whole or refused, conv kernels into ACUs exactly (Lemma 1)."""

import logging

import pytest
import timm
import torch
from torch import nn

from acuzoo.lit import ImageClassifier
from acuzoo.lit.weights import load_matching_weights
from acuzoo.nn import ActiveConv2d, convert_to_acu


def conv_net() -> nn.Sequential:
    """A stem conv, BN, a depthwise conv and a classifier, as a conv twin."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    )


def acu_net() -> nn.Sequential:
    return convert_to_acu(conv_net())


def save(state: dict[str, torch.Tensor], path) -> str:
    torch.save({"state_dict": state}, path)
    return str(path)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """BN statistics of a batch, so that the eval-mode outputs depend on the input (at init they
    saturate to a constant) and the comparison below can tell the depthwise weights apart."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(images)
    return model.eval()


def assert_same_outputs(expected: torch.Tensor, got: torch.Tensor) -> None:
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the outputs depend on the input
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_an_acu_zoo_model_started_from_its_conv_twins_file_gives_the_conv_models_outputs(tmp_path):
    torch.manual_seed(0)
    conv = ImageClassifier(model_name="mobilenetv2_conv_100", num_classes=4, in_chans=1, model_kwargs={"drop_rate": 0})
    calibrate_batchnorm(conv, torch.randn(8, 1, 32, 32))
    path = save(conv.state_dict(), tmp_path / "conv.ckpt")
    acu = ImageClassifier(model_name="mobilenetv2_acu_100", num_classes=4, in_chans=1, init_weights_from=path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert_same_outputs(conv(x), acu(x))


def test_a_converted_timm_model_started_from_conv_weights_gives_their_outputs(tmp_path):
    torch.manual_seed(0)
    timm_model = timm.create_model("mobilenetv2_100", num_classes=4, drop_rate=0.0)
    calibrate_batchnorm(timm_model, torch.randn(8, 3, 32, 32))
    path = tmp_path / "mobilenetv2_100.pth"
    torch.save(timm_model.state_dict(), path)
    acu = ImageClassifier(
        model_name="mobilenetv2_100", num_classes=4, convert_to_acu=True, init_weights_from=str(path)
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_outputs(timm_model(x), acu(x))


def test_conv_kernels_load_into_acus_on_their_grid_and_the_report_says_so(tmp_path):
    torch.manual_seed(0)
    conv = conv_net()
    model = acu_net()
    report = load_matching_weights(model, save(conv.state_dict(), tmp_path / "conv.ckpt"))
    assert report.complete
    assert report.from_conv == ["2.weight", "2.positions"]
    assert set(report.loaded) == set(conv.state_dict()) - {"2.weight"}
    assert torch.equal(model[2].weight, conv[2].weight.reshape(4, 1, 9))
    assert torch.equal(model[2].positions, model[2].initial_positions())


def test_a_partial_load_is_refused_listing_every_tensor_left_and_nothing_is_loaded(tmp_path):
    state = conv_net().state_dict()
    del state["1.running_var"]
    state["0.bias"] = torch.zeros(5)
    state["extra.weight"] = torch.zeros(1)
    path = save(state, tmp_path / "partial.ckpt")
    model = acu_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"refusing a partial load, 3 tensor\(s\)") as refused:
        load_matching_weights(model, path)
    message = str(refused.value)
    assert "1.running_var: not in the file" in message
    assert "extra.weight: in the file, not in the model" in message
    assert "0.bias: the file's (5,), the model's (4,)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_strict_false_loads_what_matches_and_logs_what_it_left(tmp_path, caplog):
    conv = conv_net()
    state = conv.state_dict()
    del state["1.running_var"]
    model = acu_net()
    with caplog.at_level(logging.WARNING, logger="acuzoo.lit.weights"):
        report = load_matching_weights(model, save(state, tmp_path / "partial.ckpt"), strict=False)
    assert report.missing == ["1.running_var"] and not report.complete
    assert torch.equal(model[0].weight, conv[0].weight)
    assert "1.running_var: not in the file" in caplog.text


def test_a_conv_kernel_is_refused_for_an_acu_whose_positions_left_the_grid(tmp_path):
    path = save(conv_net().state_dict(), tmp_path / "conv.ckpt")
    model = acu_net()
    with torch.no_grad():
        model[2].positions.add_(0.5)
    with pytest.raises(ValueError, match=r"2\.weight: the file holds a conv kernel, but the ACU's positions are not"):
        load_matching_weights(model, path)


def test_an_acu_weight_is_refused_for_a_conv_kernel_of_another_size(tmp_path):
    state = conv_net().state_dict()
    state["2.weight"] = torch.zeros(4, 1, 5, 5)
    with pytest.raises(ValueError, match=r"2\.weight: the file's \(4, 1, 5, 5\), the model's ACU takes \(4, 1, 9\)"):
        load_matching_weights(acu_net(), save(state, tmp_path / "conv5.ckpt"))


def test_only_the_named_head_may_stay_new(tmp_path):
    state = conv_net().state_dict()
    state["2.weight"] = torch.zeros(4, 1, 9)[:3]
    path = save(state, tmp_path / "other_head.ckpt")
    report = load_matching_weights(acu_net(), path, head=["2"])
    assert report.complete and report.new_head == ["2.weight", "2.positions"]
    with pytest.raises(ValueError, match=r"2\.weight: the file's \(3, 1, 9\), the model's \(4, 1, 9\)"):
        load_matching_weights(acu_net(), path)


def test_fine_tuning_to_another_class_count_keeps_a_new_classifier_and_says_so(tmp_path, caplog):
    source = ImageClassifier("cifar_resnet29_acu", num_classes=10)
    path = save(source.state_dict(), tmp_path / "source.ckpt")
    with caplog.at_level(logging.INFO, logger="acuzoo.lit.weights"):
        target = ImageClassifier("cifar_resnet29_acu", num_classes=3, init_weights_from=path)
    head = target.model.get_classifier()
    assert head.out_features == 3
    assert "the classifier stays new" in caplog.text


def test_a_conv_twins_file_missing_a_block_is_refused_by_image_classifier(tmp_path):
    conv = ImageClassifier(model_name="mobilenetv2_conv_100", num_classes=4, in_chans=1)
    state = {k: v for k, v in conv.state_dict().items() if not k.startswith("model.blocks.6.")}
    path = save(state, tmp_path / "conv.ckpt")
    with pytest.raises(ValueError, match=r"blocks\.6\.0\.conv_dw\.weight: not in the file"):
        ImageClassifier(model_name="mobilenetv2_acu_100", num_classes=4, in_chans=1, init_weights_from=path)
    relaxed = ImageClassifier(
        model_name="mobilenetv2_acu_100", num_classes=4, in_chans=1, init_weights_from=path, init_weights_strict=False
    )
    assert isinstance(relaxed.model.blocks[6][0].conv_dw, ActiveConv2d)
