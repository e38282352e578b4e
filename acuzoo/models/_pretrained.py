"""The zoo's pretrained configs: the fields every model shares, the ImageNet families' defaults,
and the ``.fmnist`` tags of the checkpoints published in ``checkpoints/`` (the files themselves
are listed in its manifest)."""

from __future__ import annotations

from typing import Any

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "fmnist_cfg", "imagenet_cfg", "zoo_cfg"]

# Fashion-MNIST's pixel statistics (acuzoo.lit.data.fashion_mnist normalizes with the same).
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def zoo_cfg(**fields: Any) -> dict[str, Any]:
    """A timm pretrained config with what every zoo model shares (no URL: weights come from
    acuzoo's checkpoint registry; licence; the paper) and the family's own ``fields``."""
    return {
        "url": "",
        "hf_hub_id": "",  # a hub's field, empty: nothing is ever downloaded
        "origin_url": "",
        "interpolation": "bilinear",
        "license": "mit",
        "paper_name": "Integrating Multiple Receptive Fields through Grouped Active Convolution",
        **fields,
    }


def imagenet_cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """A complete timm pretrained config for the ImageNet families: the paper trains and evaluates
    every ImageNet model on 224 crops of 256 images (section 5.1)."""
    family = dict(
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv=first_conv,
        classifier="classifier",
    )
    return zoo_cfg(**{**family, **kwargs})  # a tag's own fields win


def fmnist_cfg(name: str, side: int = 28, **kwargs: Any) -> dict[str, Any]:
    """Pretrained-cfg fields of ``<name>.fmnist``: 10 classes, the 28x28 grey images resized to
    ``side`` (timm's eval transform: resize, no cropping), the published file
    ``<name>.fmnist.safetensors``."""
    return {
        "file": f"{name}.fmnist.safetensors",
        "num_classes": 10,
        "input_size": (1, side, side),
        "crop_pct": 1.0,
        "mean": FMNIST_MEAN,
        "std": FMNIST_STD,
        "notes": ("Fashion-MNIST, trained here: checkpoints/manifest.json has the accuracy and the recipe",),
        **kwargs,
    }
