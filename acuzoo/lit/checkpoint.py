"""Checkpoints that lose no training state: ``last.ckpt`` at the run's latest step, and the global
random generators' states, which Lightning does not save."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor


class LastStateCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (``save_last``) always holds the latest state: written
    at each epoch's (or validation's) checkpoint time and after the run's final optimizer step,
    whether or not a top-k checkpoint is saved then. Lightning's rewrites it only with a top-k save,
    so once the monitored metric stopped improving (ties included) it stayed at the best step.

    It is written only where Lightning's loop state resumes at the right batch and epoch: after a
    batch or at validation end, never at an epoch's end (there Lightning has already counted the
    epoch as processed, and a step-bounded run resumed from it runs one epoch ahead); an epoch's
    end-of-epoch save is made after its last batch, the run's final step after its batch. Only a
    stop requested after this callback's batch hook, with no validation to follow, leaves the final
    step to the end of training. Top-k checkpoints are saved as Lightning saves them. With
    ``save_last="link"``, a step that has no top-k file to link to gets a real file."""

    _step_in_last = -1  # the global step last.ckpt holds (this run)
    _last_on_hold = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        epoch_ends = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        epoch_saves_here = epoch_ends and self._should_save_on_train_epoch_end(trainer) and self._epoch_is_due(trainer)
        if epoch_saves_here or self._run_ends_here(trainer):
            self._save_last_only(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        validation_saves = not self._should_save_on_train_epoch_end(trainer) and self._epoch_is_due(trainer)
        if validation_saves or self._run_ends_here(trainer):
            self._save_last_only(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_on_hold = True  # last.ckpt holds this step since the epoch's last batch
        try:
            super().on_train_epoch_end(trainer, pl_module)
        finally:
            self._last_on_hold = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A stop requested after this callback's batch hook (by the module's) cut the epoch with no
        # save point left: the final step is saved here, where a resume counts epochs one ahead.
        self._save_last_only(trainer)

    @staticmethod
    def _run_ends_here(trainer: pl.Trainer) -> bool:
        """``max_steps`` is reached, or a stop was requested (early stopping, a time limit) that
        ``min_epochs``/``min_steps`` allow: this batch is the run's last."""
        stop_requested = trainer.should_stop and trainer.fit_loop._can_stop_early
        return stop_requested or 0 <= trainer.max_steps <= trainer.global_step

    def _epoch_is_due(self, trainer: pl.Trainer) -> bool:
        """``every_n_epochs`` says this epoch saves (ModelCheckpoint's own test for top-k)."""
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def _save_last_only(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt unless it holds this step; a top-k save later at this step still happens."""
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if not self.save_last or not fitting or trainer.fast_dev_run or self._step_in_last == trainer.global_step:
            return
        top_k_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = top_k_step

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self._last_on_hold:
            return
        if self.save_last == "link" and self._last_global_step_saved != trainer.global_step:
            self._write_last_instead_of_link(trainer, monitor_candidates)
        else:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        self._step_in_last = trainer.global_step

    def _write_last_instead_of_link(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        # No file of this step to link to (a link would hold an older step): write last.ckpt itself.
        # Lightning writes checkpoints to a temporary file renamed into place: a link is replaced.
        self.save_last = True
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self.save_last = "link"


class RandomState(Callback):
    """Saves the global random generators' states (torch's CPU and CUDA, NumPy's, Python's) in every
    checkpoint and restores them on resume, so what draws from them (dropout, drop-path, ...)
    continues as in the uninterrupted run. Rank 0's states are saved (``seed_everything`` gives every
    rank the same), CUDA's of the process's own device. Tensors, lists and numbers only: the
    checkpoint still loads with ``torch.load(weights_only=True)``."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, python_state, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            # This process's device only (asking others would start CUDA there); none before CUDA starts.
            "torch.cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(python_state), python_gauss],
        }

    KEYS = ("torch", "torch.cuda", "numpy", "python")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [key for key in self.KEYS if key not in state_dict]
        if missing:  # checked before any generator is set: all or nothing
            raise ValueError(f"RandomState in the checkpoint lacks {missing}: expected {list(self.KEYS)}")
        torch.set_rng_state(state_dict["torch"])
        if state_dict["torch.cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["torch.cuda"])  # applied when CUDA starts
        name, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, python_state, python_gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), python_gauss))
