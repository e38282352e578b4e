"""Run by test_ddp.py as a script: two CPU processes (DDP over gloo) train a tiny ACU net with
the position callbacks, each on its own shard; every rank saves its positions at the start and
after each batch.

    python tests/lit/ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from acuzoo.lit import PositionLearningRate, PositionWarmup
from acuzoo.nn import ActiveConv2d, position_parameters

WARMUP_STEPS, MAX_STEPS = 2, 4


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ActiveConv2d(2, 4, 3, position_groups=1),
            nn.ReLU(),
            ActiveConv2d(4, 4, 3, groups=4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)


class SavePositions(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.history = out, []

    def on_train_start(self, trainer, pl_module):
        self.history.append([p.detach().clone() for p in position_parameters(pl_module)])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append([p.detach().clone() for p in position_parameters(pl_module)])

    def on_train_end(self, trainer, pl_module):
        torch.save(self.history, self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 2, 6, 6, generator=g), torch.randint(0, 3, (32,), generator=g))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=MAX_STEPS,
        callbacks=[PositionLearningRate(), PositionWarmup(steps=WARMUP_STEPS), SavePositions(out)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(Net(), DataLoader(data, batch_size=4, shuffle=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
