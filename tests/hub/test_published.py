"""The published checkpoints (checkpoints/manifest.json): complete entries, intact files, small
enough for the repository, loadable by name through timm with no network, and as accurate as the
manifest says on the documented subset of the test split (the first 1,000 test images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from acuzoo.hub import read_manifest, sha256_file

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
    assert (CHECKPOINTS.parent / info["train"]["config"]).is_file()
    assert info["measure"]["test"].startswith("python train.py test") and name in info["measure"]["test"]


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
def test_reloaded_checkpoint_reproduces_its_accuracy_on_the_test_subset(manifest, name, fmnist_test_images):
    model = timm.create_model(name, pretrained=True).eval()
    images, labels = fmnist_test_images(SUBSET)
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(1) for batch in images.split(250)])
    accuracy = 100 * (predicted == labels).float().mean().item()
    assert abs(accuracy - manifest[name].info["metrics"]["subset_acc1"]) <= TOLERANCE
