"""Resuming from a checkpoint (``ckpt_path``) continues exactly: same step, lrs, positions."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.optim.lr_scheduler import MultiStepLR

from acuzoo.lit import PositionLearningRate, PositionWarmup


def run(tiny_module, loader, trainer_factory, tmp_path, ckpt_path=None):
    # Milestone and warm-up end both fall after the resume point (step 2 of 4).
    module = tiny_module(scheduler=lambda opt: MultiStepLR(opt, milestones=[3], gamma=0.1))
    callbacks = [
        PositionLearningRate(),
        PositionWarmup(steps=3),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1),
    ]
    trainer = trainer_factory(max_epochs=2, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(module, loader(batches=2), ckpt_path=ckpt_path)
    return trainer, module


def test_resume_from_checkpoint_continues_exactly(tiny_module, loader, trainer_factory, tmp_path):
    straight, straight_module = run(tiny_module, loader, trainer_factory, tmp_path / "a")
    resumed, resumed_module = run(
        tiny_module,
        loader,
        trainer_factory,
        tmp_path / "b",
        ckpt_path=tmp_path / "a" / "ckpt" / "epoch=0.ckpt",
    )
    assert resumed.global_step == straight.global_step == 4
    lrs = [[g["lr"] for g in t.optimizers[0].param_groups] for t in (straight, resumed)]
    assert lrs[0] == lrs[1] and len(lrs[0]) == 2
    for a, b in zip(straight_module.state_dict().values(), resumed_module.state_dict().values()):
        assert torch.equal(a, b)
    states = [t.optimizers[0].state for t in (straight, resumed)]
    for a, b in zip(straight_module.positions(), resumed_module.positions()):
        assert torch.equal(states[0][a]["momentum_buffer"], states[1][b]["momentum_buffer"])


def test_resumed_run_keeps_positions_in_their_own_group(tiny_module, loader, trainer_factory, tmp_path):
    run(tiny_module, loader, trainer_factory, tmp_path / "a")
    resumed, module = run(
        tiny_module,
        loader,
        trainer_factory,
        tmp_path / "b",
        ckpt_path=tmp_path / "a" / "ckpt" / "epoch=0.ckpt",
    )
    groups = resumed.optimizers[0].param_groups
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in module.positions()}
    assert groups[1]["lr"] == pytest.approx(0.01 * groups[0]["lr"])
