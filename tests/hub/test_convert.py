"""Starting acuzoo models from ordinary convnets: timm's and torchvision's MobileNetV2 (any width)
and timm's legacy_xception become the zoo's ACU model (or its conv twin) with the same logits
(Lemma 1). Sources are randomly initialised, with BN statistics perturbed so that every tensor
matters; logits are compared in float64, where only the arithmetic order differs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from acuzoo import cli
from acuzoo.hub.commands import convert_main
from acuzoo.hub.convert import convert_pretrained, mobilenetv2_width
from acuzoo.models.mobilenetv2 import MobileNetV2
from acuzoo.nn import ActiveConv2d


@torch.no_grad()
def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _max_logit_difference(source: torch.nn.Module, target: torch.nn.Module, size: int) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        return float((source.double()(x) - target.double().eval()(x)).abs().max())


def test_timm_mobilenetv2_050_becomes_an_acu_model_with_the_same_logits():
    source = _randomized(timm.create_model("mobilenetv2_050"))
    target = convert_pretrained(source, acu=True)
    assert isinstance(target, MobileNetV2) and target.width == 0.5
    assert sum(isinstance(m, ActiveConv2d) for m in target.modules()) == 17
    assert _max_logit_difference(source, target, 64) < 1e-5


def test_timm_mobilenetv2_100_becomes_the_registered_acu_model():
    source = _randomized(timm.create_model("mobilenetv2_100"))
    target = convert_pretrained(source, acu=True)
    assert target.pretrained_cfg["architecture"] == "mobilenetv2_acu_100"
    assert _max_logit_difference(source, target, 64) < 1e-5


def test_torchvision_mobilenet_v2_140_becomes_the_conv_twin_with_the_same_logits():
    source = _randomized(torchvision.models.mobilenet_v2(weights=None, width_mult=1.4))
    target = convert_pretrained(source, acu=False)
    assert target.pretrained_cfg["architecture"] == "mobilenetv2_conv_140"
    assert _max_logit_difference(source, target, 64) < 1e-5


def test_torchvision_mobilenet_v2_width_is_read_from_its_shapes():
    assert mobilenetv2_width(torchvision.models.mobilenet_v2(weights=None, width_mult=0.75)) == 0.75


def test_timm_legacy_xception_becomes_xception_acu_with_the_same_logits():
    source = _randomized(timm.create_model("legacy_xception", num_classes=7))
    target = convert_pretrained(source, acu=True)
    assert target.pretrained_cfg["architecture"] == "xception_acu" and target.num_classes == 7
    assert sum(isinstance(m, ActiveConv2d) for m in target.modules()) == 12
    assert _max_logit_difference(source, target, 72) < 1e-5


def test_a_depth_multiplied_mobilenetv2_is_refused():
    with pytest.raises(ValueError, match="depth multipliers"):
        convert_pretrained(timm.create_model("mobilenetv2_110d"))


def test_an_unsupported_network_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot convert timm.models.resnet.ResNet"):
        convert_pretrained(timm.create_model("resnet10t"))


def test_convert_command_writes_a_timm_loadable_acu_checkpoint(tmp_path):
    source = _randomized(timm.create_model("mobilenetv2_100"))
    save_file(source.state_dict(), str(tmp_path / "mnv2.safetensors"))
    out = tmp_path / "mobilenetv2_acu_100.mine.safetensors"
    entry = convert_main(["--from-timm", "mobilenetv2_100", "--weights", str(tmp_path / "mnv2.safetensors"),
                          "--out", str(out), "--tag", "mine", "--manifest"])
    assert entry["name"] == "mobilenetv2_acu_100.mine" and (tmp_path / "manifest.json").is_file()
    from acuzoo.hub.pretrained import create_pretrained

    model = create_pretrained("mobilenetv2_acu_100", file=out)
    assert _max_logit_difference(source, model, 64) < 1e-5


def test_convert_command_never_downloads(tmp_path, capsys):
    with pytest.raises(ValueError, match="never downloads weights"):
        convert_main(["--from-timm", "mobilenetv2_100", "--out", str(tmp_path / "x.safetensors")])


# --- the command line: model arguments, headless weights, manifests, errors -------------------------------------

SMALL = "mobilenetv2_035"  # a width the zoo does not register: converted to MobileNetV2(width=0.35)


def _cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``acuzoo ...`` ending in an error."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return exit_.value.code, capsys.readouterr().err


def _small_acu(**kwargs) -> MobileNetV2:
    return MobileNetV2(width=0.35, acu=True, **kwargs)


def test_a_timm_bn_eps_is_passed_to_the_source_and_folded_into_the_running_variance(tmp_path):
    source = _randomized(timm.create_model(SMALL, bn_eps=1e-3))
    save_file(source.state_dict(), str(tmp_path / "src.safetensors"))
    out = tmp_path / "acu.safetensors"
    convert_main(["--from-timm", SMALL, "--model-kwargs", "bn_eps=0.001",
                  "--weights", str(tmp_path / "src.safetensors"), "--out", str(out)])
    target = _small_acu()
    target.load_state_dict(load_file(str(out)))
    assert _max_logit_difference(source, target, 64) < 1e-5


def test_a_timm_pad_type_reaches_the_source_and_its_run_time_padding_is_refused_by_layer(tmp_path, capsys):
    source = timm.create_model(SMALL, pad_type="same")
    save_file(source.state_dict(), str(tmp_path / "src.safetensors"))
    out = tmp_path / "acu.safetensors"
    code, err = _cli_error(["convert", "--from-timm", SMALL, "--model-kwargs", "pad_type=same",
                            "--weights", str(tmp_path / "src.safetensors"), "--out", str(out)], capsys)
    assert code == 2
    assert "'conv_stem'" in err and "Conv2dSame" in err
    assert not out.exists()


def test_headless_backbone_weights_convert_to_a_model_without_classifier(tmp_path):
    source = _randomized(timm.create_model(SMALL, num_classes=0))
    save_file(source.state_dict(), str(tmp_path / "backbone.safetensors"))
    out = tmp_path / "acu.safetensors"
    entry = convert_main(["--from-timm", SMALL, "--weights", str(tmp_path / "backbone.safetensors"), "--out", str(out)])
    assert entry["num_classes"] == 0
    target = _small_acu(num_classes=0)
    target.load_state_dict(load_file(str(out)))
    assert _max_logit_difference(source, target, 64) < 1e-5  # the pooled features


def test_convert_help_lists_the_accepted_file_formats(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for fmt in (".safetensors", ".pth", ".pt,", ".bin", ".ckpt", "weights_only"):
        assert fmt in help_text


def test_the_out_folder_is_made_and_gets_the_manifest(tmp_path):
    out = tmp_path / "mine" / "acu.safetensors"
    entry = convert_main(["--from-timm", SMALL, "--random-init", "--out", str(out), "--tag", "mine", "--manifest"])
    manifest = json.loads((tmp_path / "mine" / "manifest.json").read_text())
    assert manifest["checkpoints"] == [entry] and out.is_file()


def test_a_malformed_target_manifest_is_named_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text('{"format": 1, "checkpoints": [')
    out = tmp_path / "acu.safetensors"
    code, err = _cli_error(["convert", "--from-timm", SMALL, "--random-init", "--out", str(out), "--manifest"], capsys)
    assert code == 2
    assert "manifest.json: unreadable manifest" in err and "Traceback" not in err
    assert not out.exists()
    assert (tmp_path / "manifest.json").read_text() == '{"format": 1, "checkpoints": ['


@pytest.mark.parametrize("manifest", [["--manifest"], []], ids=["with_manifest", "without_manifest"])
def test_a_file_another_manifest_entry_uses_is_not_overwritten(registry, manifest, capsys):
    folder, _ = registry
    published = folder / "weights.safetensors"
    before = (published.read_bytes(), (folder / "manifest.json").read_text())
    code, err = _cli_error(["convert", "--from-timm", SMALL, "--random-init", "--out", str(published), *manifest],
                           capsys)
    assert code == 2
    assert "is the file of cifar_resnet29_conv3.cifar10" in err
    assert (published.read_bytes(), (folder / "manifest.json").read_text()) == before


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_manifest_entry(tmp_path, monkeypatch, capsys):
    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "checkpoints": []}))
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "acu.safetensors"
    code, err = _cli_error(["convert", "--from-timm", SMALL, "--random-init", "--out", str(out), "--manifest"], capsys)
    assert code == 2 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert json.loads((tmp_path / "manifest.json").read_text())["checkpoints"] == []
