"""Every config parses, and a few steps of each model family run in-process on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import yaml

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# One config per model family (and the two user-facing templates), run for two steps.
FAMILIES = [
    "cifar10_resnet29_acu",
    "cifar10_resnet29_x1d_acu",
    "cifar10_resnext29_8x64d",
    "cifar10_acu29_x1d",
    "imagenet_mobilenetv2_acu_080",
    "imagenet_xception_acu",
    "imagenet_inception_bn_acu",
    "quickstart",
    "finetune",
]


def model_name(config: Path) -> str:
    return yaml.safe_load(config.read_text())["model"]["model_name"]


def needs_zoo_model(config: Path):
    name = model_name(config)
    return pytest.mark.skipif(not timm.is_model(name), reason=f"zoo model {name} not registered yet")


def test_there_is_a_config_per_paper_experiment_row():
    names = {c.stem for c in CONFIGS}
    assert {"quickstart", "finetune", "cifar10_resnet29_acu_fixed"} <= names
    assert len([n for n in names if n.startswith("cifar10_")]) == 21
    assert len([n for n in names if n.startswith("imagenet_")]) == 12


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model_name"] == model_name(config)


def synthetic_overrides(tmp_path: Path, image_size: int) -> list[str]:
    return [
        "--data=acuzoo.lit.SyntheticData",
        "--data.num_samples=8",
        "--data.batch_size=4",
        f"--data.image_size={image_size}",
        "--trainer.max_steps=2",
        "--trainer.max_epochs=1",
        "--trainer.val_check_interval=null",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]


@pytest.mark.parametrize(
    "config", [pytest.param(c, marks=needs_zoo_model(c), id=c.stem) for c in CONFIGS if c.stem in FAMILIES]
)
def test_family_trains_a_few_steps_on_synthetic_data(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the configs (data roots, checkpoints) stay here
    # MobileNetV2 and friends need a few pixels left after stride 32, or BatchNorm over a batch of
    # 1x1 maps blows the gradients up (a property of the nets, not of ACUs).
    size = 16 if config.stem.startswith("cifar10_") else 64
    extra = []
    if config.stem == "finetune":
        source = tmp_path / "source.ckpt"
        from acuzoo.lit import ImageClassifier

        torch.save({"state_dict": ImageClassifier(model_name(config), num_classes=10).state_dict()}, source)
        extra = [f"--model.init_weights_from={source}"]
    main(["fit", "--config", str(config), *synthetic_overrides(tmp_path, size), *extra])
    assert list(tmp_path.glob("**/checkpoints/last.ckpt")), "fit must write the last checkpoint"


@pytest.mark.skipif(not timm.is_model("cifar_resnet29_acu"), reason="zoo model not registered yet")
def test_acu_fixed_config_trains_with_frozen_positions_from_a_checkpoint(tmp_path, monkeypatch):
    from acuzoo.lit import ImageClassifier
    from acuzoo.nn import position_parameters

    monkeypatch.chdir(tmp_path)
    trained = ImageClassifier("cifar_resnet29_acu")
    with torch.no_grad():
        for p in position_parameters(trained):
            p.add_(0.25)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "acu.ckpt")
    config = next(c for c in CONFIGS if c.stem == "cifar10_resnet29_acu_fixed")
    main(
        ["fit", "--config", str(config), *synthetic_overrides(tmp_path, 16)]
        + [f"--model.init_positions_from={tmp_path / 'acu.ckpt'}"]
    )
    last = torch.load(next(tmp_path.glob("**/checkpoints/last.ckpt")), weights_only=True)["state_dict"]
    for name, p in trained.state_dict().items():
        if name.endswith("positions"):
            assert torch.equal(last[name], p), f"{name} moved although ACU-Fixed freezes it"


def test_quickstart_baseline_is_the_same_run_with_depthwise_convs():
    configs = {c.stem: yaml.safe_load(c.read_text()) for c in CONFIGS}
    acu, base = configs["quickstart"], configs["quickstart_baseline"]
    assert acu["model"].pop("model_name") == "mobilenetv2_acu_080"
    assert base["model"].pop("model_name") == "mobilenetv2_conv_080"
    assert acu["model"] == base["model"] and acu["data"] == base["data"]
    acu_trainer = {k: v for k, v in acu["trainer"].items() if k != "callbacks"}
    assert acu_trainer == base["trainer"], "same budget and schedule"
