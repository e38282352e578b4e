"""Random images of the model's input: smoke tests and throughput checks without any files."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .base import ClassificationData


class SyntheticData(ClassificationData):
    """``num_samples`` Gaussian images with random labels per split, fixed by ``seed``.

    The images take the model's input shape unless ``image_size``/``channels`` say otherwise, and
    the labels its class count unless ``num_classes`` does (10 without a model).
    """

    def __init__(
        self,
        num_samples: int = 64,
        num_classes: int | None = None,
        batch_size: int = 16,
        image_size: int | None = None,
        channels: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, 0, image_size, channels, 0, seed)
        self.num_samples = num_samples
        self.num_classes = num_classes

    def _split(self, offset: int) -> TensorDataset:
        channels, size = self.input_shape(3, 32)
        g = torch.Generator().manual_seed(self.seed + offset)
        images = torch.randn(self.num_samples, channels, size, size, generator=g)
        labels = torch.randint(0, self.num_classes, (self.num_samples,), generator=g)
        return TensorDataset(images, labels)

    def setup(self, stage: str | None = None) -> None:
        if self.num_classes is None:
            self.num_classes = int(self.model_data_config().get("num_classes") or 10)
        self.train_set, self.val_set, self.test_set = self._split(0), self._split(1), self._split(2)
