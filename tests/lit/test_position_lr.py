"""PositionLearningRate: positions' own group, lr ratio through schedules, normalized gradient."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.optim import lr_scheduler
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


def test_positions_the_optimizer_does_not_hold_get_a_group_of_their_own(tiny_module, loader, trainer_factory):
    module = tiny_module(lr=0.1, momentum=0.9, weight_decay=0.1, leave_out_positions=True)
    trainer = trainer_factory(max_steps=1, callbacks=[PositionLearningRate(lr_mult=0.02)])
    trainer.fit(module, loader())
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2
    group = position_group(optimizer)
    assert group is optimizer.param_groups[1] and group["name"] == "positions"
    assert [id(p) for p in group["params"]] == [id(p) for p in module.positions()]
    assert group["lr"] == pytest.approx(2e-3) and group["weight_decay"] == 0.0
    assert group["momentum"] == 0.9 and group["nesterov"] is True


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
@pytest.mark.parametrize("layout", ["mixed", "own", "left-out"], ids=["split-group", "own-group", "adopted"])
def test_lr_ratio_holds_at_every_schedule_step(
    tiny_module, loader, trainer_factory, recorder, scheduler, interval, steps, batches, layout
):
    module = tiny_module(
        scheduler=scheduler,
        interval=interval,
        separate_positions=layout == "own",
        leave_out_positions=layout == "left-out",
    )
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


# --- Every scheduler of torch.optim.lr_scheduler keeps the ratio (issue 16, point 4) ---

LR_MULT = 0.01


class Decay:
    """A picklable lr factor for LambdaLR and MultiplicativeLR."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self, t: int) -> float:
        return self.rate**t


SCHEDULERS = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "MultiStepLR": lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.7),
    "CosineAnnealingLR-eta_min": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.02),
    "CosineAnnealingWarmRestarts": lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, eta_min=0.02),
    "CyclicLR": lambda opt: lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2),
    "CyclicLR-no-momentum": lambda opt: lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False
    ),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=4),
    "ConstantLR": lambda opt: lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=3),
    "PolynomialLR": lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=6, power=2.0),
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, Decay(0.8)),
    "MultiplicativeLR": lambda opt: lr_scheduler.MultiplicativeLR(opt, Decay(0.9)),
    "SequentialLR": lambda opt: lr_scheduler.SequentialLR(
        opt,
        [
            lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3),
            lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.02),
        ],
        milestones=[3],
    ),
    "ChainedScheduler": lambda opt: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2), lr_scheduler.CosineAnnealingLR(opt, 4, 0.02)]
    ),
    "ReduceLROnPlateau-min_lr": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=0.03),
    # Cuts smaller than its eps (1e-8) are skipped group by group: the positions' lr reaches that
    # size long before the weights' does.
    "ReduceLROnPlateau-eps": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0),
}
STEPS = 8


def test_the_walk_covers_every_scheduler_in_torch():
    from torch.optim.lr_scheduler import LRScheduler

    in_torch = {
        name
        for name, cls in vars(lr_scheduler).items()
        if isinstance(cls, type) and issubclass(cls, LRScheduler) and not name.startswith("_") and name != "LRScheduler"
    }
    walked = {name.split("-")[0] for name in SCHEDULERS}
    assert in_torch <= walked, f"schedulers not walked: {sorted(in_torch - walked)}"


def step_scheduler(scheduler) -> None:
    # A metric that never improves: ReduceLROnPlateau (patience 0) cuts the lr at every step.
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)
    else:
        scheduler.step()


def lrs_and_momentums(optimizer) -> list[tuple[float, float]]:
    return [(float(g["lr"]), float(g["momentum"])) for g in optimizer.param_groups]


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("layout", ["mixed", "own", "left-out"], ids=["split-group", "own-group", "adopted"])
def test_every_scheduler_keeps_positions_at_lr_mult_of_the_weights_at_every_step(tiny_module, name, layout):
    module = tiny_module(
        separate_positions=layout == "own", leave_out_positions=layout == "left-out", scheduler=SCHEDULERS[name]
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    callback = PositionLearningRate(lr_mult=LR_MULT)
    callback.on_fit_start(trainer, module)
    seen = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(lrs_and_momentums(opt)))
    for _ in range(STEPS):
        optimizer.step()
        step_scheduler(scheduler)
    assert len(seen) == STEPS
    assert len({round(step[0][0], 12) for step in seen}) >= 2, "the schedule must change the lr"
    for step in seen:
        (weight_lr, weight_momentum), (position_lr, position_momentum) = step[0], step[-1]
        assert position_lr == pytest.approx(LR_MULT * weight_lr, rel=1e-9, abs=1e-15)
        assert position_momentum == weight_momentum


def with_plateau_metric(module_class):
    """The tiny module logging a metric that never improves, for ReduceLROnPlateau's monitor."""

    class PlateauMetricModule(module_class):
        def training_step(self, batch, batch_idx):
            self.log("never_better", 1.0)
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            config = super().configure_optimizers()
            config["lr_scheduler"]["monitor"] = "never_better"
            return config

    return PlateauMetricModule


class VisibleLrs(pl.Callback):
    """The lrs a logger sees between batches (LearningRateMonitor reads them at batch start)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_keeps_the_ratio_in_a_lightning_run(tiny_module, loader, trainer_factory, recorder, name):
    module = with_plateau_metric(tiny_module)(scheduler=SCHEDULERS[name])
    visible = VisibleLrs()
    # The callback comes first, so the batch-start lrs are read after it ran.
    callbacks = [PositionLearningRate(lr_mult=LR_MULT), recorder, visible]
    trainer = trainer_factory(max_steps=STEPS, callbacks=callbacks)
    trainer.fit(module, loader(batches=4))
    assert len(recorder.lrs) == STEPS
    assert len({round(lrs[0], 12) for lrs in recorder.lrs}) >= 2, "the schedule must change the lr"
    for lrs in recorder.lrs + visible.lrs:
        assert lrs[-1] == pytest.approx(LR_MULT * lrs[0], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("lr_mult", [float("nan"), float("inf"), 0.0, -0.1])
def test_lr_mult_must_be_a_finite_positive_number(lr_mult):
    with pytest.raises(ValueError, match="lr_mult must be a finite number > 0"):
        PositionLearningRate(lr_mult=lr_mult)


def test_the_callback_owns_the_positions_lr_whatever_configure_optimizers_gave_them(tiny_module):
    module = tiny_module(lr=0.1, separate_positions=True)
    optimizer = module.configure_optimizers()
    optimizer.param_groups[1]["lr"] = 0.5  # the positions' group, given an lr of its own
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[])
    PositionLearningRate(lr_mult=LR_MULT).on_fit_start(trainer, module)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(LR_MULT * 0.1)
