"""Fashion-MNIST, the embedded default dataset: Debian's ``dataset-fashion-mnist`` or a torchvision root."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .base import ClassificationData

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
LAYOUT = (
    "expected the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) in the root itself "
    f"(Debian's dataset-fashion-mnist: {DEBIAN_ROOT}) or in <root>/FashionMNIST/raw (torchvision)"
)
MEAN, STD = 0.2860, 0.3530
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is named ``.gz``; a bad archive is named."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    if not data.startswith(GZIP_MAGIC):
        raise ValueError(f"{path} is named .gz but is not a gzip file ({LAYOUT})")
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a truncated or corrupt gzip file: {err} ({LAYOUT})") from err


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, as a numpy array."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes ({LAYOUT})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header is cut short ({LAYOUT})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes ({LAYOUT})")
    return body.reshape(shape)


def check_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """Every label in ``[0, num_classes)``, else an error naming the file and the first bad one."""
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(
            f"{path}: {bad.size} labels outside [0, {num_classes}), the first {int(labels[bad[0]])} at index "
            f"{int(bad[0])}; Fashion-MNIST has {num_classes} classes ({LAYOUT})"
        )


def find_files(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """The (images, labels) paths of each split under ``root``, in either layout."""
    root = Path(root)
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for split, names in FILES.items():
            paths = []
            for name in names:
                hits = [folder / (name + ext) for ext in ("", ".gz") if (folder / (name + ext)).is_file()]
                if hits:
                    paths.append(hits[0])
            if len(paths) == 2:
                found[split] = (paths[0], paths[1])
        if len(found) == 2:
            return found
    raise FileNotFoundError(f"Fashion-MNIST not found at {root}: {LAYOUT}")


def load_split(root: str | Path, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 1, 28, 28), int64 labels (N,)) of a split."""
    image_path, label_path = find_files(root)[split]
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{image_path} / {label_path}: {images.shape} images do not match {labels.shape} labels ({LAYOUT})"
        )
    check_labels(labels, label_path, len(CLASSES))
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class TensorImages(Dataset):
    """Images held as one uint8 tensor, transformed one by one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


class RepeatChannels(torch.nn.Module):
    """Grey to ``channels`` identical channels (for models that want RGB)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, *x.shape[1:]).contiguous() if x.shape[0] != self.channels else x


def grey_transform(
    size: int,
    channels: int,
    train: bool,
    native: int,
    fit: Literal["pad", "resize"],
    mean: float,
    std: float,
    crop_padding: int = 4,
) -> v2.Compose:
    """uint8 (1, H, W) -> normalized float (channels, size, size): zero-pad or resize to ``size``;
    for training also a horizontal flip and, unless ``crop_padding`` is 0, pad + random crop (the
    paper's CIFAR augmentation is pad 4)."""
    steps: list[torch.nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
    if size != native:
        if fit == "pad" and size > native:
            extra = size - native
            steps.append(v2.Pad([extra // 2, extra // 2, extra - extra // 2, extra - extra // 2]))
        else:
            steps.append(v2.Resize([size, size], antialias=True))
    if train:
        if crop_padding:
            steps.append(v2.RandomCrop(size, padding=crop_padding))
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.Normalize([mean], [std]), RepeatChannels(channels)]
    return v2.Compose(steps)


class FashionMNISTData(ClassificationData):
    """Fashion-MNIST (10 classes, 60k train / 10k test, 28x28 grey), no download ever.

    Args:
        root: Debian's install (default) or any folder in either layout of ``LAYOUT``.
        fit: how 28x28 becomes a larger model input: "pad" with zeros (the background) or "resize".
        augment: random crop and flip on the training split.
        crop_padding: the random crop's zero padding, in pixels of the model input; 0 leaves a flip
            only (Fashion-MNIST's garments are centred, so shifted ones are a kind the test never shows).
        Others: see ``ClassificationData``.
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        fit: Literal["pad", "resize"] = "pad",
        augment: bool = True,
        crop_padding: int = 4,
        val_size: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, image_size, channels, val_size, seed)
        self.root = root
        self.fit = fit
        self.augment = augment
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0 pixels, got {crop_padding}")
        self.crop_padding = crop_padding
        self.num_classes = len(CLASSES)

    def prepare_data(self) -> None:
        find_files(self.root)  # fail early, with the layout, before any process starts work

    def setup(self, stage: str | None = None) -> None:
        channels, size = self.input_shape(1, 28)

        def transform(train: bool) -> v2.Compose:
            return grey_transform(
                size, channels, train and self.augment, 28, self.fit, MEAN, STD, self.crop_padding
            )

        if stage in (None, "fit", "validate"):
            images, labels = load_split(self.root, "train")
            train = TensorImages(images, labels, transform(True))
            self.train_set, self.val_set = self.split_train(train, TensorImages(images, labels, transform(False)))
        images, labels = load_split(self.root, "test")
        self.test_set = TensorImages(images, labels, transform(False))
