"""Any image-folder dataset (ImageNet included): ``train/`` and ``val/`` of class folders."""

from __future__ import annotations

from pathlib import Path

import timm.data
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from .base import ClassificationData

LAYOUT = (
    "expected <root>/train/<class>/<image> and <root>/val/<class>/<image> (optionally <root>/test/ "
    "too), the same class folders in each"
)
# Train images are resized so that a 224 crop comes from 256 (paper 5.1), at any input size.
RESIZE_RATIO = 256 / 224


class UnreadableImageError(OSError):
    """An image file of the dataset that cannot be decoded (corrupt, truncated, not an image)."""


def read_image(path: str) -> Image.Image:
    """An RGB PIL image, as ``ImageFolder``'s default loader gives, or an error naming the file.

    Checking every file at setup would read the whole dataset before the first step; the file is
    named where it is read instead (a DataLoader worker re-raises this with its message)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise UnreadableImageError(
            f"image folder dataset: cannot read {path} ({type(err).__name__}: {err}); the file is corrupt, "
            "truncated or not an image: replace or remove it"
        ) from err


def train_transform(size: int, channels: int, mean: tuple, std: tuple, interpolation: str) -> v2.Compose:
    """The paper's ImageNet augmentation: resize to 256 (for a 224 input), random 224 crop, flip."""
    resize = round(size * RESIZE_RATIO)
    steps: list[torch.nn.Module] = [
        v2.PILToTensor(),
        v2.Resize([resize, resize], interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.RandomCrop(size),
        v2.RandomHorizontalFlip(),
    ]
    if channels == 1:
        steps.append(v2.Grayscale(1))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(config: dict, size: int, channels: int) -> torch.nn.Module:
    """timm's eval transform for the model's data config (resize by crop_pct, centre crop)."""
    transform = timm.data.create_transform(
        input_size=size,
        is_training=False,
        interpolation=config.get("interpolation", "bilinear"),
        mean=config["mean"],
        std=config["std"],
        crop_pct=config.get("crop_pct"),
        crop_mode=config.get("crop_mode"),
    )
    return v2.Compose([v2.Grayscale(1), transform]) if channels == 1 else transform


class ImageFolderData(ClassificationData):
    """Image folders in torchvision's ``ImageFolder`` layout (see ``LAYOUT``); what fine-tuning on
    new data uses. Mean, std and eval resizing come from timm's data config of the model.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        Others: see ``ClassificationData`` (``val_size`` is unused: ``val/`` is the validation split).
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        num_workers: int = 8,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, image_size, channels, 0, 0)
        self.root = root
        self.num_classes: int | None = None

    def _folder(self, split: str) -> Path:
        folder = Path(self.root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder dataset: {folder} is missing; {LAYOUT}")
        return folder

    def _dataset(self, split: str, transform: torch.nn.Module) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(self._folder(split)), transform=transform, loader=read_image)
        except FileNotFoundError as err:  # ImageFolder's "found no valid file / no class folders"
            raise FileNotFoundError(f"image folder dataset: {self.root}/{split}: {err}; {LAYOUT}") from err

    def prepare_data(self) -> None:
        self._folder("train")
        self._folder("val")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            self.prepare_data()  # both folders, before reading either
        config = {"mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}
        config.update(self.model_data_config())
        channels, size = self.input_shape(3, 224)
        mean, std = config["mean"], config["std"]
        if channels == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
            config = {**config, "mean": mean, "std": std}
        evaluate = eval_transform(config, size, channels)
        if stage in (None, "fit", "validate"):
            interpolation = config.get("interpolation", "bilinear")
            interpolation = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
            self.train_set = self._dataset("train", train_transform(size, channels, mean, std, interpolation))
            self.val_set = self._dataset("val", evaluate)
            if self.train_set.classes != self.val_set.classes:
                raise ValueError(
                    f"image folder dataset: {self.root}/train and {self.root}/val have different class "
                    f"folders ({len(self.train_set.classes)} vs {len(self.val_set.classes)}); {LAYOUT}"
                )
            self.num_classes = len(self.train_set.classes)
        test = "test" if (Path(self.root) / "test").is_dir() else "val"
        self.test_set = self._dataset(test, evaluate)
        if self.num_classes is None:
            self.num_classes = len(self.test_set.classes)
