"""``PositionLearningRate``: ACU positions train in their own group at a fraction of the weights'
lr, without weight decay, on the normalized gradient (DESIGN.md, Training conventions)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch.utils.hooks import RemovableHandle

from ..nn import normalize_position_grad_, position_parameters
from .param_groups import PositionGroup, follow_weights_lr, isolate_positions


def _positions_in(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> list[torch.Tensor]:
    ids = {id(p) for p in position_parameters(module)}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) in ids]


def _follow_before_step(
    groups: list[PositionGroup], lr_mult: float, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
) -> None:
    follow_weights_lr(optimizer, groups, lr_mult)


class PositionLearningRate(Callback):
    """Positions get lr = ``lr_mult`` x the weights' lr (paper: 1e-3 at base lr 0.1), weight
    decay 0 and the same momentum, at every optimizer step, whatever the scheduler.

    This callback is the one owner of the positions' group and of its lr (``lr_mult`` is the only
    setting of it): whatever lr ``configure_optimizers`` gave them, it is replaced. Positions that
    no optimizer holds (``ImageClassifier`` leaves them out) get a group of their own in the first
    optimizer, following its first group of weights; positions sharing a group with weights move
    to a group of their own that follows that group; a group of positions only follows the
    optimizer's first group of weights. The schedulers' per-group state is extended to the new
    groups so that every scheduler keeps stepping them, and right before each optimizer step (and
    after each scheduler step Lightning makes, so loggers see it) the positions' lr is set from
    the weights' lr: schedules that are not plain multiples of a base lr (``eta_min``,
    ReduceLROnPlateau's ``min_lr`` and ``eps``, CyclicLR) cannot move the ratio. Resumed runs
    included.

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
        if not (math.isfinite(lr_mult) and lr_mult > 0):
            raise ValueError(
                f"lr_mult must be a finite number > 0 (the positions' lr / the weights' lr), got {lr_mult}"
            )
        self.lr_mult = lr_mult
        self.normalize_grad = normalize_grad
        self._groups: list[tuple[torch.optim.Optimizer, list[PositionGroup]]] = []
        self._hooks: list[RemovableHandle] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()
        positions = [p for p in position_parameters(pl_module) if p.requires_grad]
        if not positions:
            rank_zero_warn("PositionLearningRate: the model has no trainable ACU positions; nothing to do")
            return
        held = {id(p) for optimizer in trainer.optimizers for g in optimizer.param_groups for p in g["params"]}
        unheld = [p for p in positions if id(p) not in held]
        for index, optimizer in enumerate(trainer.optimizers):
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
            adopt = unheld if index == 0 else ()
            groups = isolate_positions(optimizer, positions, self.lr_mult, schedulers, adopt=adopt)
            if not groups:
                continue
            if any(g.follows is None for g in groups):
                rank_zero_warn(
                    "PositionLearningRate: an optimizer holds ACU positions and nothing else; their lr was "
                    "scaled by lr_mult once and then follows that optimizer's own schedule"
                )
            self._groups.append((optimizer, groups))
            self._hooks.append(optimizer.register_step_pre_hook(partial(_follow_before_step, groups, self.lr_mult)))
        self._follow()

    def _follow(self) -> None:
        for optimizer, groups in self._groups:
            follow_weights_lr(optimizer, groups, self.lr_mult)

    def _release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._groups = [], []

    # Lightning steps schedulers between batches (by step before on_train_batch_end; plateau ones
    # after validation; by epoch after on_train_epoch_end): each of these follows one of them.
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._follow()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._follow()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.normalize_grad:
            normalize_position_grad_(_positions_in(optimizer, pl_module))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release()
