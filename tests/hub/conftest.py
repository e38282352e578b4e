"""Fixtures of the hub tests: a throw-away checkpoint registry, and real Fashion-MNIST test images
prepared exactly as the published checkpoints were evaluated (28x28 grey, normalized, no padding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from acuzoo.hub import save_checkpoint
from acuzoo.hub.manifest import write_entry

ARCH = "cifar_resnet29_conv3"  # small (1.2M parameters) and quick to build
NAME = f"{ARCH}.cifar10"
REPO = Path(__file__).resolve().parents[2]


def _fmnist_test_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT, MEAN, STD, grey_transform, load_split

    try:
        images, labels = load_split(DEBIAN_ROOT, "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    transform = grey_transform(28, 1, False, 28, "pad", MEAN, STD)
    return torch.stack([transform(image) for image in images[:count]]), labels[:count]


def _make_model(**kwargs) -> torch.nn.Module:
    kwargs = {"num_classes": 10, "in_chans": 1, **kwargs}
    return timm.create_model(ARCH, **kwargs).eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread per test module, restored after: on the shared 2-core machine two threads
    wait on each other whenever the other core is busy (these tests ran 10-50x slower so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fmnist_test_images():
    """``fmnist_test_images(n)``: the first n Fashion-MNIST test images and labels, as the published
    checkpoints see them; skips where the dataset is not installed."""
    return _fmnist_test_images


@pytest.fixture
def make_model():
    """``make_model(**kwargs)``: a fresh ``ARCH`` (10 classes, 1 channel unless told), eval mode."""
    return _make_model


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A folder with manifest.json and one checkpoint (``NAME``) of a randomly initialised model."""
    torch.manual_seed(0)
    model = _make_model()
    sha = save_checkpoint(model, tmp_path / "weights.safetensors", ARCH)
    write_entry({"name": NAME, "file": "weights.safetensors", "sha256": sha}, tmp_path)
    return tmp_path, model
