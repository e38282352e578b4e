"""``PositionLearningRate``: ACU positions train in their own group at a fraction of the weights'
lr, without weight decay, on the normalized gradient (DESIGN.md, Training conventions)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ..nn import normalize_position_grad_, position_parameters
from .param_groups import isolate_positions


def _positions_in(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> list[torch.Tensor]:
    ids = {id(p) for p in position_parameters(module)}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) in ids]


class PositionLearningRate(Callback):
    """Positions get lr = ``lr_mult`` x their group's lr (paper: 1e-3 at base lr 0.1), weight
    decay 0, the same momentum, and the same schedule: every scheduler's per-group base lr is
    scaled too, so the ratio holds at every step, resumed runs included.

    With ``normalize_grad`` each synapse's gradient is divided by its L2 norm in
    ``on_before_optimizer_step``. Lightning calls that hook once the gradient is complete: after
    the closure's backward (so after the DDP all-reduce), only on the last micro-batch of an
    accumulation, after the AMP scaler's ``unscale_``, and before gradient clipping and the step
    (``Precision._after_closure``; ``MixedPrecision.optimizer_step``).

    Works on any LightningModule whose model holds ACU layers. The groups are rewritten in
    ``on_fit_start``: after ``configure_optimizers`` made the optimizers and schedulers, before a
    checkpoint's optimizer and scheduler states are loaded into them.
    """

    def __init__(self, lr_mult: float = 0.01, normalize_grad: bool = True) -> None:
        if lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {lr_mult}")
        self.lr_mult = lr_mult
        self.normalize_grad = normalize_grad

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        positions = [p for p in position_parameters(pl_module) if p.requires_grad]
        if not positions:
            rank_zero_warn("PositionLearningRate: the model has no trainable ACU positions; nothing to do")
            return
        for optimizer in trainer.optimizers:
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
            isolate_positions(optimizer, positions, self.lr_mult, schedulers)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.normalize_grad:
            normalize_position_grad_(_positions_in(optimizer, pl_module))
