"""Accuracy as a timm user measures it: the model's own data config (``resolve_data_config``) makes
timm's eval transform (``create_transform``), applied to each image as a PIL image. The published
checkpoints' figures come from here, so they hold for anyone who follows timm's recipe, whatever
resizing our training pipeline did."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

__all__ = ["fmnist_test_accuracy", "pil_images", "timm_eval_transform", "top1_accuracy"]


def timm_eval_transform(model: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for ``model``, from its pretrained config."""
    return create_transform(**resolve_data_config(model=model), is_training=False)


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    """uint8 grey images, (N, 1, H, W) or (N, H, W), as PIL "L" images."""
    if images.dtype != torch.uint8 or images.dim() not in (3, 4) or (images.dim() == 4 and images.shape[1] != 1):
        raise ValueError(
            "images must be uint8 grey images of shape (N, H, W) or (N, 1, H, W), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    return [Image.fromarray(image.reshape(image.shape[-2:]).numpy(), mode="L") for image in images]


def top1_accuracy(
    model: torch.nn.Module, images: Sequence[Image.Image], labels: torch.Tensor, batch_size: int = 250
) -> float:
    """Plain top-1 accuracy (%) of ``model`` in eval mode on PIL ``images`` through timm's eval transform."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"images and labels must be non-empty and as many, got {len(images)} and {len(labels)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    transform = timm_eval_transform(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([transform(image) for image in images[start : start + batch_size]])
                correct += (model(batch).argmax(1) == labels[start : start + batch_size]).sum().item()
    finally:
        model.train(was_training)
    return 100.0 * correct / len(images)


def fmnist_test_accuracy(model: torch.nn.Module, count: int | None = None, root: str | None = None) -> float:
    """Top-1 accuracy (%) on the first ``count`` (default all 10,000) Fashion-MNIST test images,
    in file order, as a timm user measures it. Raises FileNotFoundError where the data is missing."""
    from ..lit.data.fashion_mnist import DEBIAN_ROOT, load_split

    images, labels = load_split(root or DEBIAN_ROOT, "test")
    if count is not None:
        if not 0 < count <= len(labels):
            raise ValueError(f"count must be in 1..{len(labels)}, got {count}")
        images, labels = images[:count], labels[:count]
    return top1_accuracy(model, pil_images(images), labels)
