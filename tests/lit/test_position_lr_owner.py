"""The positions' lr has one owner: ``PositionLearningRate``. ``ImageClassifier`` leaves the
positions out of the optimizer it makes; the callback adds their group and sets its lr to
``lr_mult`` x the weights' lr at every step, whatever the module's own lr, decay or schedule;
training positions without the callback is refused before the first step."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from acuzoo.lit import ImageClassifier, PositionLearningRate, SyntheticData
from acuzoo.lit.param_groups import POSITIONS_KEY
from acuzoo.nn import position_parameters

MODEL = "cifar_resnet29_acu"
STEPS = 4


def tiny_data() -> SyntheticData:
    return SyntheticData(num_samples=8, num_classes=10, batch_size=4, image_size=8, channels=3)


def classifier(**kwargs) -> ImageClassifier:
    # Milestones inside the run, so that the weights' lr changes between steps.
    defaults = dict(schedule="multistep", milestones=(1, 3), gamma=0.5)
    return ImageClassifier(MODEL, num_classes=10, **{**defaults, **kwargs})


class LrRecorder(pl.Callback):
    """Every group's lr as each optimizer step used it."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_fit_start(self, trainer, pl_module):
        for optimizer in trainer.optimizers:
            optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self.lrs.append([float(g["lr"]) for g in opt.param_groups])
            )


def position_group_of(optimizer: torch.optim.Optimizer) -> int:
    (index,) = [i for i, g in enumerate(optimizer.param_groups) if g.get(POSITIONS_KEY)]
    return index


def test_configure_optimizers_gives_the_positions_no_group():
    module = classifier()
    optimizer = module.configure_optimizers()["optimizer"]
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in position_parameters(module)}
    assert not any(g.get(POSITIONS_KEY) for g in optimizer.param_groups)


@pytest.mark.parametrize("lr_mult", [0.01, 0.05])
@pytest.mark.parametrize(
    "module_args",
    [dict(lr=0.1), dict(lr=0.3, weight_decay=1e-3, no_weight_decay_norm_bias=True), dict(lr=0.1, momentum=0.0)],
    ids=["recipe", "other-lr-and-decay", "no-momentum"],
)
def test_positions_train_at_lr_mult_times_the_weights_lr_at_every_step(trainer_factory, lr_mult, module_args):
    module = classifier(**module_args)
    recorder = LrRecorder()  # listed after the callback: its pre-step hook runs after the callback's
    trainer = trainer_factory(max_steps=STEPS, callbacks=[PositionLearningRate(lr_mult=lr_mult), recorder])
    trainer.fit(module, datamodule=tiny_data())
    optimizer = trainer.optimizers[0]
    positions = position_group_of(optimizer)
    group = optimizer.param_groups[positions]
    assert {id(p) for p in group["params"]} == {id(p) for p in position_parameters(module)}
    assert group["weight_decay"] == 0.0
    assert len(recorder.lrs) == STEPS
    assert len({lrs[0] for lrs in recorder.lrs}) >= 2, "the schedule must change the weights' lr"
    for lrs in recorder.lrs:
        assert lrs[positions] == pytest.approx(lr_mult * lrs[0], rel=1e-12)


def test_training_positions_without_the_callback_is_refused_before_any_step(trainer_factory):
    trainer = trainer_factory(max_steps=STEPS)
    with pytest.raises(ValueError, match=r"no PositionLearningRate callback.*freeze_positions"):
        trainer.fit(classifier(), datamodule=tiny_data())
    assert trainer.global_step == 0


def test_frozen_positions_train_without_the_callback(trainer_factory):
    module = classifier(freeze_positions=True)
    before = [p.clone() for p in position_parameters(module)]
    trainer = trainer_factory(max_steps=2)
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(before, position_parameters(module), strict=True))


def test_a_model_without_positions_needs_no_callback(trainer_factory):
    trainer = trainer_factory(max_steps=1)
    trainer.fit(ImageClassifier("cifar_resnet29_conv3", num_classes=10), datamodule=tiny_data())
    assert trainer.global_step == 1
