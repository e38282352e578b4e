"""What the zoo's pretrained configs say about the checkpoints published in ``checkpoints/``
(the model files use these for their ``.fmnist`` tags; the files themselves are in the manifest)."""

from __future__ import annotations

from typing import Any

# Fashion-MNIST's pixel statistics (acuzoo.lit.data.fashion_mnist normalizes with the same).
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def fmnist_cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    """Pretrained-cfg fields of ``<name>.fmnist``: 10 classes, 28x28 grey images as they are (no
    resizing or cropping), the published file ``<name>.fmnist.safetensors``."""
    return {
        "file": f"{name}.fmnist.safetensors",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "crop_pct": 1.0,
        "mean": FMNIST_MEAN,
        "std": FMNIST_STD,
        "notes": ("Fashion-MNIST, trained here: checkpoints/manifest.json has the accuracy and the recipe",),
        **kwargs,
    }
