"""CIFAR-10 / CIFAR-100 from a local root in torchvision's format, with the paper's augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision import datasets
from torchvision.transforms import v2

from .base import ClassificationData
from .fashion_mnist import TensorImages

STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
SPLITS = {
    10: {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    100: {"train": ["train"], "test": ["test"]},
}
LABEL_KEYS = {10: "labels", 100: "fine_labels"}


def cifar_transform(num_classes: Literal[10, 100], size: int, channels: int, train: bool) -> v2.Compose:
    """uint8 (3, 32, 32) -> normalized float; for training pad 4, random crop 32 and horizontal
    flip (paper, Appendix B); resized or made grey only when the model wants it."""
    mean, std = STATS[num_classes]
    steps: list[torch.nn.Module] = []
    if train:
        steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if size != 32:
        steps.append(v2.Resize([size, size], antialias=True))
    if channels == 1:
        steps.append(v2.Grayscale(1))
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def layout(root: str | Path, num_classes: int) -> str:
    files = ", ".join(SPLITS[num_classes]["train"] + SPLITS[num_classes]["test"])
    return f"expected {Path(root) / FOLDERS[num_classes]}/ holding {files} (torchvision's python version)"


def load_split(root: str | Path, num_classes: Literal[10, 100], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) read from torchvision's pickled batches."""
    images, labels = [], []
    for name in SPLITS[num_classes][split]:
        path = Path(root) / FOLDERS[num_classes] / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-{num_classes}: {path} is missing; {layout(root, num_classes)}")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[LABEL_KEYS[num_classes]], dtype=np.int64))
        except Exception as err:
            raise ValueError(f"CIFAR-{num_classes}: {path} is malformed ({err}); {layout(root, num_classes)}") from err
        bad = np.flatnonzero((labels[-1] < 0) | (labels[-1] >= num_classes))
        if bad.size:
            raise ValueError(
                f"CIFAR-{num_classes}: {path} has {bad.size} labels outside [0, {num_classes}), the first "
                f"{int(labels[-1][bad[0]])} at index {int(bad[0])}; is it CIFAR-{num_classes}?"
            )
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class CIFARData(ClassificationData):
    """CIFAR-10 or CIFAR-100 (50k train / 10k test, 32x32 RGB) in torchvision's format.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        num_classes: 10 or 100.
        download: fetch the archive into ``root`` when it is missing (needs network); never
            otherwise.
        val_size: images held out of train for validation; 0 (the paper's setting) validates on test.
        Others: see ``ClassificationData``.
    """

    def __init__(
        self,
        root: str = "data/cifar",
        num_classes: Literal[10, 100] = 10,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 2,
        image_size: int | None = None,
        channels: int | None = None,
        val_size: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, image_size, channels, val_size, seed)
        if num_classes not in STATS:
            raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
        self.root = root
        self.num_classes = num_classes
        self.download = download

    def _present(self) -> bool:
        folder = Path(self.root) / FOLDERS[self.num_classes]
        return all((folder / n).is_file() for names in SPLITS[self.num_classes].values() for n in names)

    def prepare_data(self) -> None:
        if self._present():
            return
        if not self.download:
            raise FileNotFoundError(
                f"CIFAR-{self.num_classes} not found at {Path(self.root).resolve()}: "
                f"{layout(self.root, self.num_classes)}; set download: true to fetch it (needs network)"
            )
        cls = datasets.CIFAR10 if self.num_classes == 10 else datasets.CIFAR100
        try:
            cls(self.root, train=True, download=True)
        except Exception as err:  # URLError, HTTPError, timeouts: say what to do instead
            raise RuntimeError(
                f"downloading CIFAR-{self.num_classes} into {self.root} failed ({err}); "
                f"without network place {FOLDERS[self.num_classes]}/ there by hand"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        channels, size = self.input_shape(3, 32)

        def transform(train: bool) -> v2.Compose:
            return cifar_transform(self.num_classes, size, channels, train)

        if stage in (None, "fit", "validate"):
            images, labels = load_split(self.root, self.num_classes, "train")
            self.train_set, self.val_set = self.split_train(
                TensorImages(images, labels, transform(True)), TensorImages(images, labels, transform(False))
            )
        images, labels = load_split(self.root, self.num_classes, "test")
        self.test_set = TensorImages(images, labels, transform(False))
