"""What every classification DataModule shares: loaders, a held-out split, and the model's input.

The training loader resumes exactly: its order is a function of (seed, epoch) alone (torch's
``DistributedSampler``), each sample's random draws (augmentation) come from a seed of its own, and
Lightning keeps the loader's position (``state_dict``) in its checkpoints, so a run resumed from one,
at an epoch boundary or mid-epoch, draws the batches the uninterrupted run drew.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

# Offsets the samples' seeds from the shuffle's, which torch seeds with seed + epoch.
_SAMPLE_SEEDS_STREAM = 1 << 40


class EpochSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (this process's share of an order fixed by ``seed`` and the
    epoch alone) whose items are ``(index, sample_seed)``: ``SeededSamples`` draws the sample's
    randomness from ``sample_seed``, a function of (seed, epoch, index), so augmentation does not
    depend on workers, order or resumes. ``start`` skips that many items of the next iteration only
    (a resumed epoch)."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def sample_seeds(self) -> list[int]:
        """This epoch's seed of each dataset index."""
        g = torch.Generator().manual_seed(self.seed + self.epoch + _SAMPLE_SEEDS_STREAM)
        return torch.randint(2**62, (len(self.dataset),), generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        seeds = self.sample_seeds()
        return iter([(i, seeds[i]) for i in itertools.islice(super().__iter__(), start, None)])


class SeededSamples(Dataset):
    """``dataset[index]`` with torch's CPU generator seeded by the item's ``sample_seed`` (see
    ``EpochSampler``) and restored afterwards: the sample's random transforms repeat on resume and the
    global generator (dropout, ...) is left alone. A plain index (another sampler) reads unseeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, sample_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            return self.dataset[index]


class ResumableLoader(DataLoader):
    """The training DataLoader over an ``EpochSampler``. Lightning saves its ``state_dict`` (the epoch
    and how many of its samples were drawn) with the fit loop's state and, on resume, hands it back
    to ``load_state_dict``: that epoch's next iteration then skips the samples already trained on
    (the same samples with another batch size). Under another sampler (Lightning's, for
    ``overfit_batches``) it is a plain DataLoader."""

    STATE_KEYS = frozenset({"epoch", "samples_drawn"})

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.samples_drawn = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples drawn) from a checkpoint

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochSampler):
            return {}
        return {"epoch": self.sampler.epoch, "samples_drawn": self.samples_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(self.sampler, EpochSampler):
            return
        if set(state) != self.STATE_KEYS:
            raise ValueError(
                f"training loader state {sorted(state)} in the checkpoint: expected {sorted(self.STATE_KEYS)}"
            )
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = (state["epoch"], state["samples_drawn"])

    def _samples_to_skip(self) -> int:
        resume_at, self._resume_at = self._resume_at, None
        # Lightning sets the epoch after restoring the state: a finished epoch was moved past.
        return resume_at[1] if resume_at is not None and resume_at[0] == self.sampler.epoch else 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: the sampler is read at the first batch, after Lightning's set_epoch.
        if isinstance(self.sampler, EpochSampler):
            self.samples_drawn = self.sampler.start = self._samples_to_skip()
        for batch in super().__iter__():
            self.samples_drawn += self.batch_size
            yield batch


class ClassificationData(pl.LightningDataModule):
    """Base of the image-classification DataModules.

    Args:
        batch_size: per process (DDP multiplies it by the world size).
        num_workers: DataLoader workers; 0 loads in the training process.
        image_size, channels: what each image becomes; default (None) the model's input, read
            from the ``data_config`` of the trainer's LightningModule (``ImageClassifier`` has
            one), else the dataset's own.
        val_size: images held out of the training split for validation (0: validate on test).
        seed: the held-out split's seed; the training order's and augmentation's too, with the
            run's (``seed_everything``'s).
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
        for name, value in (("image_size", image_size), ("channels", channels)):
            # None means "the model's"; 0 is a mistake, never a silent default.
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None (the model's), got {value!r}")
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

    def shuffle_seed(self) -> int:
        """``seed`` plus the run's seed, which Lightning's ``seed_everything`` keeps in ``PL_GLOBAL_SEED``
        (and gives its own distributed samplers)."""
        return self.seed + int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _replicas(self) -> dict[str, int]:
        """This process's share of each epoch: Lightning's ``distributed_sampler_kwargs`` under DDP."""
        kwargs = getattr(getattr(self, "trainer", None), "distributed_sampler_kwargs", None)
        return {"num_replicas": kwargs["num_replicas"], "rank": kwargs["rank"]} if kwargs else {}

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a DataLoader")
        # Its own generator: making an iterator (the workers' base seed) leaves the global one alone.
        common = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.shuffle_seed()),
        )
        if not train:
            return DataLoader(dataset, shuffle=False, **common)
        samples = SeededSamples(dataset)
        sampler = EpochSampler(samples, shuffle=True, seed=self.shuffle_seed(), **self._replicas())
        return ResumableLoader(samples, sampler=sampler, drop_last=True, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set if self.val_set is not None else self.test_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
