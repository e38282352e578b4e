"""PositionLearningRate: positions' own group, lr ratio through schedules, normalized gradient."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR

from acuzoo.lit import PositionLearningRate
from acuzoo.lit.optim import LinearDecay
from acuzoo.lit.param_groups import POSITIONS_KEY


def position_group(optimizer):
    groups = [g for g in optimizer.param_groups if g.get(POSITIONS_KEY)]
    assert len(groups) == 1
    return groups[0]


def test_positions_are_split_out_of_a_mixed_group_with_lr_mult_and_no_weight_decay(
    tiny_module, loader, trainer_factory
):
    module = tiny_module(lr=0.1, momentum=0.9, weight_decay=0.1)
    trainer = trainer_factory(max_steps=1, callbacks=[PositionLearningRate(lr_mult=0.01)])
    trainer.fit(module, loader())
    optimizer = trainer.optimizers[0]
    group = position_group(optimizer)
    assert {id(p) for p in group["params"]} == {id(p) for p in module.positions()}
    assert group["lr"] == pytest.approx(1e-3)
    assert group["weight_decay"] == 0.0
    assert group["momentum"] == 0.9 and group["nesterov"] is True
    weights = optimizer.param_groups[0]
    assert weights["weight_decay"] == 0.1 and weights["lr"] == 0.1
    assert not {id(p) for p in weights["params"]} & {id(p) for p in module.positions()}


def test_a_group_of_positions_only_is_rescaled_in_place(tiny_module, loader, trainer_factory):
    module = tiny_module(lr=0.1, separate_positions=True)
    trainer = trainer_factory(max_steps=1, callbacks=[PositionLearningRate(lr_mult=0.05)])
    trainer.fit(module, loader())
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2
    assert position_group(optimizer) is optimizer.param_groups[1]
    assert optimizer.param_groups[1]["lr"] == pytest.approx(5e-3)


@pytest.mark.parametrize(
    ("scheduler", "interval", "steps", "batches"),
    [
        (lambda opt: MultiStepLR(opt, milestones=[2, 4], gamma=0.1), "step", 6, 4),
        (lambda opt: LambdaLR(opt, LinearDecay(3)), "epoch", 8, 2),
    ],
    ids=["multistep-by-iterations", "linear-by-epochs"],
)
@pytest.mark.parametrize("separate", [False, True], ids=["split-group", "own-group"])
def test_lr_ratio_holds_at_every_schedule_step(
    tiny_module, loader, trainer_factory, recorder, scheduler, interval, steps, batches, separate
):
    module = tiny_module(scheduler=scheduler, interval=interval, separate_positions=separate)
    trainer = trainer_factory(max_steps=steps, callbacks=[PositionLearningRate(lr_mult=0.01), recorder])
    trainer.fit(module, loader(batches=batches))
    assert len(recorder.lrs) == steps
    weight_lrs = [lrs[0] for lrs in recorder.lrs]
    assert len(set(weight_lrs)) >= 3, "the schedule must change the lr"
    for weight_lr, position_lr in recorder.lrs:
        assert position_lr == pytest.approx(0.01 * weight_lr, rel=1e-9, abs=1e-15)


def test_position_grads_have_unit_norm_per_synapse_at_the_optimizer_step(
    tiny_module, loader, trainer_factory, recorder
):
    trainer = trainer_factory(max_steps=3, callbacks=[PositionLearningRate(), recorder])
    trainer.fit(tiny_module(), loader())
    assert len(recorder.grad_norms) == 3
    for norms in recorder.grad_norms:
        assert len(norms) == 2
        for n in norms:
            assert torch.allclose(n, torch.ones_like(n), atol=1e-6)


def test_without_normalization_position_grads_keep_their_norm(tiny_module, loader, trainer_factory, recorder):
    trainer = trainer_factory(max_steps=1, callbacks=[PositionLearningRate(normalize_grad=False), recorder])
    trainer.fit(tiny_module(), loader())
    assert not all(torch.allclose(n, torch.ones_like(n)) for n in recorder.grad_norms[0])


def test_normalization_happens_before_gradient_clipping(tiny_module, loader, trainer_factory, recorder):
    # Clipped after normalizing, every synapse keeps the same (clip-scaled) norm, below one.
    trainer = trainer_factory(max_steps=2, gradient_clip_val=1e-2, callbacks=[PositionLearningRate(), recorder])
    trainer.fit(tiny_module(), loader())
    for norms in recorder.grad_norms:
        flat = torch.cat([n.flatten() for n in norms])
        assert flat.max() < 0.5
        assert torch.allclose(flat, flat[0].expand_as(flat), rtol=1e-5)


def test_normalization_applies_to_the_accumulated_gradient(tiny_module, loader, trainer_factory, recorder):
    data = loader(batches=2)
    trainer = trainer_factory(max_steps=1, accumulate_grad_batches=2, callbacks=[PositionLearningRate(), recorder])
    trainer.fit(tiny_module(), data)

    # By hand: the mean gradient of the two micro-batches, then normalized once.
    reference = tiny_module()
    for x, y in data:
        (torch.nn.functional.cross_entropy(reference(x), y) / 2).backward()
    for got, p in zip(recorder.grads[0], reference.positions()):
        norm = torch.linalg.vector_norm(p.grad, dim=-1, keepdim=True)
        assert torch.allclose(got, p.grad / norm, atol=1e-6)
