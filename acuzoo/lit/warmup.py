"""``PositionWarmup``: ACU positions stay frozen for the first optimizer steps (paper 3.2.1, 4.3.1)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ..nn import position_parameters


class PositionWarmup(Callback):
    """For the first ``steps`` optimizer steps the positions do not move: their gradients are
    dropped (set to None) right before each step, so the optimizer skips them entirely: no
    update, no momentum buffer, no weight decay, whatever their group's settings. Afterwards they
    learn as usual; their momentum starts from zero at the first step after the warm-up.

    The decision reads ``trainer.global_step`` (optimizer steps taken), which every DDP rank
    shares and a checkpoint restores, so all ranks freeze and release together and a resumed run
    continues the warm-up where it stopped. The positions still get gradients during warm-up
    (toggling ``requires_grad`` would upset DDP's reducer); only the step ignores them.

    The paper uses 10k steps for ACUs sharing one position set (CIFAR ResNet-ACU) and none for
    depthwise ACUs, where it hurts (Table 4).
    """

    def __init__(self, steps: int = 10000) -> None:
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps

    def frozen(self, trainer: pl.Trainer) -> bool:
        """Whether the next optimizer step leaves the positions alone."""
        return trainer.global_step < self.steps

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.frozen(trainer):
            return
        for p in position_parameters(pl_module):
            p.grad = None
