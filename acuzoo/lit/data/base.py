"""What every classification DataModule shares: loaders, a held-out split, and the model's input."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset


class ClassificationData(pl.LightningDataModule):
    """Base of the image-classification DataModules.

    Args:
        batch_size: per process (DDP multiplies it by the world size).
        num_workers: DataLoader workers; 0 loads in the training process.
        image_size, channels: what each image becomes; default (None) the model's input, read
            from the ``data_config`` of the trainer's LightningModule (``ImageClassifier`` has
            one), else the dataset's own.
        val_size: images held out of the training split for validation (0: validate on test).
        seed: the held-out split's seed.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        val_size: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.channels = channels
        self.val_size = val_size
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def model_data_config(self) -> dict[str, Any]:
        """The attached LightningModule's ``data_config`` (timm's), or {} when there is none."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return dict(getattr(module, "data_config", None) or {})

    def input_shape(self, native_channels: int, native_size: int) -> tuple[int, int]:
        """(channels, side) the images must have: explicit args, else the model's, else native."""
        config_size = self.model_data_config().get("input_size")
        channels = self.channels or (config_size[0] if config_size else native_channels)
        size = self.image_size or (config_size[-1] if config_size else native_size)
        return int(channels), int(size)

    def split_train(self, train: Dataset, train_eval: Dataset) -> tuple[Dataset, Dataset | None]:
        """Hold ``val_size`` images out of ``train``; ``train_eval`` is the same images with the
        eval transform, which the held-out part uses."""
        if self.val_size <= 0:
            return train, None
        n = len(train)
        if self.val_size >= n:
            raise ValueError(f"val_size {self.val_size} leaves no training images (the split has {n})")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return Subset(train, order[self.val_size :]), Subset(train_eval, order[: self.val_size])

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a DataLoader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set if self.val_set is not None else self.test_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
