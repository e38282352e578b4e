"""A tiny LightningModule holding ACU layers (the callbacks must work on ANY such module) and a
quiet CPU Trainer for the callback tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from acuzoo.nn import ActiveConv2d


class TinyACUModule(pl.LightningModule):
    """Two ACUs (one shared position set, one depthwise) and a head; SGD with momentum and
    weight decay on ONE group holding everything, positions included, unless told otherwise:
    ``separate_positions`` gives them a group of their own, ``leave_out_positions`` keeps them out
    of the optimizer (as ``ImageClassifier`` does)."""

    def __init__(
        self,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.1,
        separate_positions: bool = False,
        leave_out_positions: bool = False,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        interval: str = "step",
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            ActiveConv2d(2, 4, 3, position_groups=1),
            nn.ReLU(),
            ActiveConv2d(4, 4, 3, groups=4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.separate_positions = separate_positions
        self.leave_out_positions = leave_out_positions
        self.scheduler, self.interval = scheduler, interval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        positions = self.positions()
        ids = {id(p) for p in positions}
        rest = [p for p in self.parameters() if id(p) not in ids]
        if self.separate_positions:
            params = [{"params": rest}, {"params": positions, "weight_decay": 0.0}]
        elif self.leave_out_positions:
            params = rest
        else:
            params = self.parameters()
        opt = torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.momentum > 0
        )
        if self.scheduler is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": self.interval},
        }

    def positions(self) -> list[torch.Tensor]:
        return [m.positions for m in self.net if isinstance(m, ActiveConv2d)]


def tiny_loader(batches: int = 4, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    n = batches * batch_size
    data = TensorDataset(torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def quiet_trainer(tmp_path, **kwargs: Any) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class StepRecorder(pl.Callback):
    """Records, at each optimizer step, the per-synapse norms of the position gradients the step
    used and every group's lr; after each batch, the positions.

    A step post-hook: Lightning runs the closure (backward, hooks, clipping) inside
    ``optimizer.step``, so a pre-hook would come too early. SGD leaves ``.grad`` untouched on CPU;
    CUDA's foreach SGD adds (Nesterov) momentum into it in place, so CUDA tests use momentum 0."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []
        self.grad_norms: list[list[torch.Tensor]] = []
        self.lrs: list[list[float]] = []
        self.positions_after_batch: list[list[torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module):
        def post_step(optimizer, args, kwargs):
            self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])
            # In the module's order, not the optimizer's: tests compare with pl_module.positions().
            grads = [p.grad.clone() for p in pl_module.positions() if p.grad is not None]
            self.grads.append(grads)
            self.grad_norms.append([torch.linalg.vector_norm(g, dim=-1) for g in grads])

        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(post_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.positions_after_batch.append([p.detach().clone() for p in pl_module.positions()])


@pytest.fixture
def tiny_module() -> type[TinyACUModule]:
    return TinyACUModule


@pytest.fixture
def loader() -> Callable[..., DataLoader]:
    return tiny_loader


@pytest.fixture
def trainer_factory(tmp_path) -> Callable[..., pl.Trainer]:
    return lambda **kwargs: quiet_trainer(tmp_path, **kwargs)


@pytest.fixture
def recorder() -> StepRecorder:
    return StepRecorder()
