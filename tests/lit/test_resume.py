"""Resuming from a checkpoint (``ckpt_path``) continues exactly: same step, lrs, positions; the data
order, the random streams and the epoch numbers too; and ``last.ckpt`` always holds the final step."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import Dataset

from acuzoo.lit import LastStateCheckpoint, PositionLearningRate, PositionWarmup, RandomState, SyntheticData
from acuzoo.lit.data.base import SeededSamples


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


# The stopped-and-resumed runs below use what the CLI uses: LastStateCheckpoint (last + best by
# val/acc1), RandomState, and a ClassificationData (SyntheticData: 12 samples in shuffled batches of
# 4, 3 steps an epoch). They must end as the uninterrupted run does, bitwise: these CPU kernels are
# deterministic.


@pytest.fixture
def scored_module(tiny_module):
    class ScoredModule(tiny_module):
        """The tiny ACU module with optional dropout, a val/acc1 that is ``scores[epoch]`` (the last
        one from then on), and a stop request after step ``stop_after_step``."""

        def __init__(self, scores=(0.5,), dropout=0.0, stop_after_step=None):
            super().__init__()
            self.scores = scores
            self.dropout = nn.Dropout(dropout)
            self.stop_after_step = stop_after_step

        def forward(self, x):
            return self.net[-1](self.dropout(self.net[:-1](x)))

        def validation_step(self, batch, batch_idx):
            self.log("val/acc1", self.scores[min(self.current_epoch, len(self.scores) - 1)])

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.global_step == self.stop_after_step:
                self.trainer.should_stop = True  # after the callbacks' hooks, as a module would

    return ScoredModule


@pytest.fixture
def fit_run(scored_module, trainer_factory, tmp_path):
    def fit(name, *, ckpt_path=None, module=None, data=None, validate=False, save_last=True, **trainer_kwargs):
        """Fit into ``tmp_path/name``; return (module, trainer, its last.ckpt)."""
        module = module or scored_module()
        checkpoint = LastStateCheckpoint(
            dirpath=tmp_path / name, monitor="val/acc1" if validate else None, mode="max", save_last=save_last
        )
        limits = {} if validate else {"limit_val_batches": 0}
        callbacks = [checkpoint, RandomState()]
        trainer = trainer_factory(enable_checkpointing=True, callbacks=callbacks, **limits, **trainer_kwargs)
        data = data or SyntheticData(num_samples=12, num_classes=3, batch_size=4, image_size=6, channels=2)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return module, trainer, tmp_path / name / "last.ckpt"

    return fit


def assert_same_training_state(straight: tuple, resumed: tuple) -> None:
    (module_a, trainer_a, last_a), (module_b, trainer_b, last_b) = straight, resumed
    for (name, a), b in zip(module_a.state_dict().items(), module_b.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs by up to {(a - b).abs().max().item():.3g}"
    states = [t.optimizers[0].state for t in (trainer_a, trainer_b)]
    for a, b in zip(module_a.parameters(), module_b.parameters()):
        assert torch.equal(states[0][a]["momentum_buffer"], states[1][b]["momentum_buffer"])
    assert (trainer_b.global_step, trainer_b.current_epoch) == (trainer_a.global_step, trainer_a.current_epoch)
    saved_a, saved_b = (torch.load(path, weights_only=True) for path in (last_a, last_b))
    assert (saved_b["global_step"], saved_b["epoch"]) == (saved_a["global_step"], saved_a["epoch"])


@pytest.mark.parametrize(
    "stop, resume",
    [({"max_epochs": 1}, {"max_epochs": 3}), ({"max_steps": 6}, {"max_steps": 9})],
    ids=["max_epochs", "max_steps"],
)
@pytest.mark.parametrize("validate", [False, True], ids=["no-validation", "validation"])
def test_resume_at_an_epoch_boundary_ends_with_the_uninterrupted_state(fit_run, stop, resume, validate):
    straight = fit_run("straight", validate=validate, **resume)
    stopped = fit_run("stopped", validate=validate, **stop)
    resumed = fit_run("resumed", ckpt_path=stopped[2], validate=validate, **resume)
    assert_same_training_state(straight, resumed)


VALIDATION = {
    "no-validation": {},
    "validation-each-epoch": {"validate": True},
    "validation-every-2-steps": {"validate": True, "val_check_interval": 2, "check_val_every_n_epoch": None},
}


@pytest.mark.parametrize("validation", VALIDATION.values(), ids=VALIDATION.keys())
def test_resume_mid_epoch_ends_with_the_uninterrupted_state_and_epoch_numbers(fit_run, validation):
    straight = fit_run("straight", max_steps=8, **validation)
    stopped = fit_run("stopped", max_steps=4, **validation)  # one batch into epoch 1
    saved = torch.load(stopped[2], weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (4, 1)
    resumed = fit_run("resumed", ckpt_path=stopped[2], max_steps=8, **validation)
    assert_same_training_state(straight, resumed)


def test_resume_mid_epoch_continues_the_global_random_stream(fit_run, scored_module):
    # Dropout draws from torch's global generator, which RandomState keeps in the checkpoint.
    straight = fit_run("straight", module=scored_module(dropout=0.5), max_steps=8)
    stopped = fit_run("stopped", module=scored_module(dropout=0.5), max_steps=4)
    resumed = fit_run("resumed", module=scored_module(dropout=0.5), ckpt_path=stopped[2], max_steps=8)
    assert_same_training_state(straight, resumed)


class RandomlyShifted(Dataset):
    """An augmentation as torchvision's transforms draw theirs: from torch's generator, per sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image + torch.randn(()), label


class AugmentedData(SyntheticData):
    def __init__(self, num_workers: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_workers = num_workers

    def setup(self, stage=None):
        super().setup(stage)
        self.train_set = RandomlyShifted(self.train_set)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_mid_epoch_repeats_the_augmentation_draws(fit_run, num_workers):
    # A worker's generator runs on through the epoch (and across epochs: workers persist); a resumed
    # run's starts afresh. Each sample's draws are seeded by (seed, epoch, index) instead.
    def data():
        return AugmentedData(
            num_samples=12, num_classes=3, batch_size=4, image_size=6, channels=2, num_workers=num_workers
        )

    straight = fit_run("straight", data=data(), max_steps=8)
    stopped = fit_run("stopped", data=data(), max_steps=4)
    resumed = fit_run("resumed", data=data(), ckpt_path=stopped[2], max_steps=8)
    assert_same_training_state(straight, resumed)


@pytest.mark.parametrize("scores", [(0.5,), (0.5, 0.4, 0.3)], ids=["ties", "worse"])
@pytest.mark.parametrize("save_last", [True, "link"])
def test_last_checkpoint_holds_the_final_step_when_val_acc1_does_not_improve(fit_run, scored_module, scores, save_last):
    module, trainer, last = fit_run(
        "run", module=scored_module(scores=scores), validate=True, save_last=save_last, max_epochs=3
    )
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == trainer.global_step == 9
    for name, value in module.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value)
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert best["global_step"] == 3, "the best checkpoint is still the first epoch's"


@pytest.mark.parametrize("validation", VALIDATION.values(), ids=VALIDATION.keys())
def test_last_checkpoint_holds_the_step_a_stop_request_ended_the_run_on(fit_run, scored_module, validation):
    module, trainer, last = fit_run("run", module=scored_module(stop_after_step=4), max_epochs=3, **validation)
    assert torch.load(last, weights_only=True)["global_step"] == trainer.global_step == 4


@pytest.mark.parametrize("validation", list(VALIDATION.values())[1:], ids=list(VALIDATION)[1:])
def test_resume_after_a_stop_request_mid_epoch_ends_with_the_uninterrupted_state(fit_run, scored_module, validation):
    # Lightning validates on the batch a stop was requested on: last.ckpt is saved there.
    straight = fit_run("straight", max_steps=8, **validation)
    stopped = fit_run("stopped", module=scored_module(stop_after_step=4), max_steps=8, **validation)
    resumed = fit_run("resumed", ckpt_path=stopped[2], max_steps=8, **validation)
    assert_same_training_state(straight, resumed)


def test_linked_last_checkpoint_becomes_a_file_of_the_final_step_when_the_metric_stops_improving(
    fit_run, scored_module
):
    # Validation every 2 steps: at steps 2 and 4 val/acc1 improves (last.ckpt links to the best
    # file), at 6 and 8 it ties.
    module, trainer, last = fit_run(
        "run",
        module=scored_module(scores=(0.1, 0.2)),
        validate=True,
        save_last="link",
        max_steps=8,
        val_check_interval=2,
        check_val_every_n_epoch=None,
    )
    assert torch.load(last, weights_only=True)["global_step"] == 8
    assert torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["global_step"] == 4


# The training loader on its own.


def training_loader(seed: int = 0):
    data = SyntheticData(num_samples=12, num_classes=3, batch_size=4, image_size=6, channels=2, seed=seed)
    data.setup("fit")
    return data.train_dataloader()


def first_pixels(batches) -> list[list[float]]:
    return [images[:, 0, 0, 0].tolist() for images, _ in batches]


def test_training_order_is_a_function_of_the_seeds_and_epoch_alone(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # what seed_everything(0) sets
    torch.manual_seed(1)
    order = first_pixels(training_loader())
    torch.manual_seed(2)
    assert first_pixels(training_loader()) == order, "the global generator does not choose the order"
    later = training_loader()
    later.sampler.set_epoch(1)
    assert first_pixels(later) != order
    assert first_pixels(training_loader(seed=1)) != order
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")  # what seed_everything(1) sets
    assert first_pixels(training_loader()) != order


def test_training_loader_state_resumes_its_epoch_at_the_next_batch():
    interrupted = training_loader()
    interrupted.sampler.set_epoch(2)
    batches = iter(interrupted)
    next(batches)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "samples_drawn": 4}
    rest = first_pixels(batches)
    resumed = training_loader()
    resumed.load_state_dict(state)
    assert first_pixels(resumed) == rest
    assert len(first_pixels(resumed)) == 3, "the next iteration is a whole epoch again"


def test_training_loader_state_resumes_at_the_same_sample_with_another_batch_size():
    interrupted = training_loader()
    batches = iter(interrupted)
    next(batches)
    state = interrupted.state_dict()
    rest = sum(first_pixels(batches), [])
    resumed = SyntheticData(num_samples=12, num_classes=3, batch_size=2, image_size=6, channels=2)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert sum(first_pixels(loader), []) == rest


def test_training_loader_refuses_a_state_it_did_not_write():
    with pytest.raises(ValueError, match=r"training loader state \['epoch'\] in the checkpoint: expected"):
        training_loader().load_state_dict({"epoch": 0})


def test_overfit_batches_trains_with_lightnings_sequential_sampler(fit_run):
    module, trainer, last = fit_run("run", overfit_batches=1, max_epochs=2)
    assert trainer.global_step == 2


def test_training_loader_state_of_another_epoch_does_not_skip():
    resumed = training_loader()
    resumed.load_state_dict({"epoch": 0, "samples_drawn": 12})  # saved at epoch 0's end
    resumed.sampler.set_epoch(1)  # Lightning moves on to epoch 1
    assert len(first_pixels(resumed)) == 3


def test_training_loader_takes_this_process_share_under_ddp():
    def share(rank: int) -> list[float]:
        data = SyntheticData(num_samples=12, num_classes=3, batch_size=2, image_size=6, channels=2)
        data.trainer = SimpleNamespace(
            lightning_module=None, distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}
        )
        data.setup("fit")
        return sum(first_pixels(data.train_dataloader()), [])

    shares = share(0), share(1)
    assert len(shares[0]) == len(shares[1]) == 6
    assert sorted(shares[0] + shares[1]) == sorted(sum(first_pixels(training_loader()), []))


def test_seeded_samples_draw_from_their_seed_and_leave_the_global_generator_alone():
    samples = SeededSamples(RandomlyShifted([(torch.zeros(()), 0)] * 2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = samples[(0, 123)][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(samples[(1, 123)][0], first), "the same seed, the same draw"
    assert not torch.equal(samples[(0, 124)][0], first)


# RandomState on its own.


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_state_restores_torch_numpy_and_python_generators():
    saved = RandomState().state_dict()
    expected = draws()
    draws()
    RandomState().load_state_dict(saved)
    assert draws() == expected


def test_random_state_refuses_a_state_that_lacks_a_generator_and_sets_none():
    saved = RandomState().state_dict()
    del saved["numpy"]
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"RandomState in the checkpoint lacks \['numpy'\]"):
        RandomState().load_state_dict(saved)
    assert torch.equal(torch.get_rng_state(), before)
