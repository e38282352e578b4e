"""The published checkpoints (checkpoints/manifest.json): complete entries, intact files, small
enough for the repository, loadable by name through timm with no network, as accurate as the
manifest says on the documented subset of the test split (the first 1,000 test images) when
measured as a timm user would, and at the accuracy the zoo promises (>= 93 % on all 10,000)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import yaml

from acuzoo.hub import read_manifest, sha256_file
from acuzoo.hub.evaluate import fmnist_test_accuracy

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
REQUIRED = [
    "cifar_resnet29_conv3.fmnist",
    "cifar_resnet29_acu.fmnist",
    "mobilenetv2_conv_100.fmnist",
    "mobilenetv2_acu_100.fmnist",
]
DOCUMENTATION = ("dataset", "metrics", "measure", "train", "license", "input_size", "num_classes", "in_chans")
SUBSET = 1000
TOLERANCE = 0.2  # accuracy points
TARGET = 93.0  # % on the 10,000 test images, a timm user's measurement
PAIRS = [("mobilenetv2_conv_100", "mobilenetv2_acu_100"), ("resnet29_conv3", "resnet29_acu")]
# Strict: a checkpoint that reaches the target turns its case into a failure until the mark goes.
BELOW_TARGET: dict[str, str] = {}  # name -> why a required checkpoint misses the target (none now)


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(CHECKPOINTS)


def test_the_four_required_checkpoints_are_published(manifest):
    assert set(REQUIRED) <= set(manifest)


@pytest.mark.parametrize("name", REQUIRED)
def test_each_entry_documents_data_metric_command_config_and_license(manifest, name):
    info = manifest[name].info
    assert all(info.get(field) for field in DOCUMENTATION), [f for f in DOCUMENTATION if not info.get(f)]
    assert info["metrics"]["test_images"] == 10000 and 10 < info["metrics"]["test_acc1"] <= 100
    assert f"first {SUBSET} test images" in info["metrics"]["subset"]
    assert "resolve_data_config" in info["metrics"]["how"] and "PIL" in info["metrics"]["how"]
    assert (CHECKPOINTS.parent / info["train"]["config"]).is_file()
    assert info["measure"]["test"] == f"python checkpoints/publish.py --measure {name}"
    lightning_test = info["measure"]["lightning_test"]
    assert lightning_test.startswith("python train.py test") and name in lightning_test
    assert info["train"]["wall_time_s"] > 0 and info["train"]["hardware"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=BELOW_TARGET[n])) if n in BELOW_TARGET else n
     for n in REQUIRED],
)
def test_each_checkpoint_reaches_the_promised_accuracy_with_its_recipe_recorded(manifest, name):
    info = manifest[name].info
    assert info["metrics"]["test_acc1"] >= TARGET
    assert {"length", "batch_size", "optimizer", "schedule", "augmentation", "input"} <= set(info["train"]["recipe"])


@pytest.mark.parametrize("name", REQUIRED)
def test_each_tag_feeds_timm_users_the_input_size_its_weights_were_trained_at(manifest, name):
    from PIL import Image

    from acuzoo.hub.evaluate import timm_eval_transform

    config = yaml.safe_load((CHECKPOINTS.parent / manifest[name].info["train"]["config"]).read_text())
    side = config["model"]["input_size"]
    model = timm.create_model(name, num_classes=10, in_chans=1)
    assert timm_eval_transform(model)(Image.new("L", (28, 28))).shape == (1, side, side)


@pytest.mark.parametrize("conv, acu", PAIRS)
def test_each_conv_acu_pair_is_trained_with_one_recipe(conv, acu):
    def recipe(run: str) -> dict:
        config = yaml.safe_load((CHECKPOINTS / "configs" / f"fmnist_{run}.yaml").read_text())
        config.pop("run_name")
        config["model"].pop("model_name")
        config["trainer"]["callbacks"] = [
            c for c in config["trainer"].get("callbacks") or [] if not c["class_path"].endswith("PositionLearningRate")
        ]
        return config

    assert recipe(conv) == recipe(acu)


def test_every_file_is_intact_and_the_total_is_under_60_mb(manifest):
    files = [CHECKPOINTS / e.file for e in manifest.values()]
    assert all(sha256_file(f) == e.sha256 for f, e in zip(files, manifest.values()))
    assert sum(f.stat().st_size for f in files) < 60e6


@pytest.mark.parametrize("name", REQUIRED)
def test_the_registered_tag_points_at_the_published_file(manifest, name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.file == manifest[name].file
    assert (cfg.num_classes, cfg.input_size) == (10, tuple(manifest[name].info["input_size"]))


@pytest.mark.parametrize("name", REQUIRED)
def test_reloaded_checkpoint_reproduces_its_accuracy_on_the_test_subset(manifest, name):
    model = timm.create_model(name, pretrained=True)
    try:
        accuracy = fmnist_test_accuracy(model, SUBSET)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    assert abs(accuracy - manifest[name].info["metrics"]["subset_acc1"]) <= TOLERANCE
