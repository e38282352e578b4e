"""PositionWarmup: positions frozen for the first N optimizer steps, learning afterwards."""

from __future__ import annotations

import pytest
import torch

from acuzoo.lit import PositionLearningRate, PositionWarmup


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_positions_are_bit_identical_during_warmup_and_move_after(tiny_module, loader, trainer_factory, recorder):
    # One SGD group with momentum and weight decay holds the positions too: both must be skipped.
    module = tiny_module(momentum=0.9, weight_decay=0.1)
    initial = [p.detach().clone() for p in module.positions()]
    first_weight = module.net[0].weight.detach().clone()
    trainer = trainer_factory(max_steps=5, callbacks=[PositionWarmup(steps=3), recorder])
    trainer.fit(module, loader(batches=5))
    after = recorder.positions_after_batch
    for step in range(3):
        assert same(after[step], initial), f"positions moved during warm-up step {step + 1}"
    assert not same(after[3], initial), "positions must learn once the warm-up is over"
    assert not torch.equal(module.net[0].weight, first_weight), "weights train during warm-up"


def test_positions_get_no_momentum_during_warmup(tiny_module, loader, trainer_factory):
    module = tiny_module(momentum=0.9, weight_decay=0.1)
    trainer = trainer_factory(max_steps=2, callbacks=[PositionWarmup(steps=2)])
    trainer.fit(module, loader())
    state = trainer.optimizers[0].state
    for p in module.positions():
        assert state[p].get("momentum_buffer") is None
    assert state[module.net[0].weight].get("momentum_buffer") is not None


def test_momentum_of_positions_starts_at_the_first_step_after_warmup(tiny_module, loader, trainer_factory, recorder):
    module = tiny_module(momentum=0.9, weight_decay=0.1)
    trainer = trainer_factory(max_steps=3, callbacks=[PositionWarmup(steps=2), recorder])
    trainer.fit(module, loader())
    state = trainer.optimizers[0].state
    before_step = recorder.positions_after_batch[1]
    for p, grad, value in zip(module.positions(), recorder.grads[2], before_step):
        # First buffer = this step's gradient plus its weight decay: nothing carried from warm-up.
        assert torch.allclose(state[p]["momentum_buffer"], grad + 0.1 * value)


def test_warmup_counts_optimizer_steps_under_gradient_accumulation(tiny_module, loader, trainer_factory, recorder):
    module = tiny_module()
    initial = [p.detach().clone() for p in module.positions()]
    trainer = trainer_factory(max_steps=3, accumulate_grad_batches=2, callbacks=[PositionWarmup(steps=2), recorder])
    trainer.fit(module, loader(batches=6))
    after = recorder.positions_after_batch
    assert len(after) == 6
    assert all(same(a, initial) for a in after[:4]), "2 optimizer steps = 4 micro-batches frozen"
    assert not same(after[5], initial)


def test_warmup_and_position_lr_together_keep_positions_frozen_then_normalized(
    tiny_module, loader, trainer_factory, recorder
):
    module = tiny_module()
    callbacks = [PositionLearningRate(), PositionWarmup(steps=2), recorder]
    trainer_factory(max_steps=3, callbacks=callbacks).fit(module, loader())
    assert recorder.grad_norms[0] == [] and recorder.grad_norms[1] == []
    for n in recorder.grad_norms[2]:
        assert torch.allclose(n, torch.ones_like(n), atol=1e-6)


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match="steps"):
        PositionWarmup(steps=-1)
