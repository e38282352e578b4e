"""``ImageClassifier``: any timm model (acuzoo's or timm's) trained as an image classifier."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import timm
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..models import is_zoo_model
from ..nn import convert_to_acu, position_parameters
from .optim import Schedule, build_schedule, parameter_groups
from .position_lr import PositionLearningRate
from .weights import classifier_names, load_matching_weights, load_positions

Stage = Literal["train", "val", "test"]
STAGES = ("train", "val", "test")


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classification of a timm model, with the paper's SGD recipes.

    Args:
        model_name: a timm name; ``import acuzoo`` registers the zoo (e.g. ``cifar_resnet29_acu``).
        num_classes, in_chans: head and stem sizes passed to ``timm.create_model``.
        input_size: square input side the data should have; default from the model's timm config.
        pretrained: timm pretrained weights (needs them cached or online).
        model_kwargs: further ``timm.create_model`` keyword arguments (e.g. ``drop_rate``).
        convert_to_acu: turn the model's depthwise convs into depthwise ACUs (for timm's own models).
        init_weights_from: checkpoint whose tensors start the model, matched by name and shape; a
            conv kernel starts the ACU at its grid (Lemma 1), so a conv twin's file gives its outputs.
        init_weights_strict: refuse a start from ``init_weights_from`` that would leave any tensor of
            the model or of the file unloaded (the error lists them). The classifier is the exception:
            one of another class count (or none in the file) stays new, as fine-tuning wants.
            ``False`` loads whatever matches and logs the rest.
        init_positions_from: checkpoint whose ACU positions start the model, weights left freshly
            initialised (ACU-Fixed, paper 3.2.2, with ``freeze_positions``).
        freeze_positions: positions never train (not given to the optimizer).
        label_smoothing: cross-entropy label smoothing.
        lr, momentum, nesterov, weight_decay: SGD for the weights. Trainable ACU positions need the
            ``PositionLearningRate`` callback, the one owner of their group: it sets their lr
            (``lr_mult`` x the weights' lr, at every step) and keeps them out of weight decay;
            ``fit`` refuses to start without it.
        no_weight_decay_norm_bias: no weight decay on BN and bias parameters either.
        schedule: "multistep" (multiply by ``gamma`` at each of ``milestones``; default the CIFAR
            recipe's 32k and 48k steps), "linear" (to 0 over ``schedule_length``) or "constant".
        schedule_interval: the schedule counts optimizer "step"s or "epoch"s.
        schedule_length: linear decay length; default the trainer's max_epochs or total steps.
        channels_last: keep the model's 4-D weights and every input batch channels-last (as timm's
            ``--channels-last``); on the CPU, depthwise ACUs then take the channel-block kernels.
        compile: compile the model with ``torch.compile``'s default backend (inductor), in place
            (``nn.Module.compile``: parameter names and checkpoints stay those of the eager model).
            Each ACU layer is one node of the graph; the first step of each stage pays the compile.
    """

    def __init__(
        self,
        model_name: str = "cifar_resnet29_acu",
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int | None = None,
        pretrained: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        convert_to_acu: bool = False,
        init_weights_from: str | None = None,
        init_weights_strict: bool = True,
        init_positions_from: str | None = None,
        freeze_positions: bool = False,
        label_smoothing: float = 0.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        no_weight_decay_norm_bias: bool = False,
        schedule: Schedule = "multistep",
        schedule_interval: Literal["step", "epoch"] = "step",
        milestones: tuple[int, ...] = (32000, 48000),
        gamma: float = 0.1,
        schedule_length: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        check_input_size(input_size)
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes, in_chans, pretrained, model_kwargs or {}, convert_to_acu)
        if init_weights_from:
            load_matching_weights(
                self.model, init_weights_from, strict=init_weights_strict, head=classifier_names(self.model)
            )
        if init_positions_from:
            load_positions(self.model, init_positions_from)
        if freeze_positions:
            for p in position_parameters(self.model):
                p.requires_grad_(False)
        if channels_last:
            # Module.to keeps each tensor's strides afterwards (device moves, checkpoint loads).
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        top5 = min(5, num_classes)
        # One metric object per stage (torchmetrics keep state between update and compute); the
        # keys avoid "train", which nn.Module already has as an attribute.
        # Plain accuracy ("micro"); torchmetrics' default averages per class, which differs on
        # unbalanced data such as a user's image folders.
        accuracy = partial(MulticlassAccuracy, num_classes, average="micro")
        self.acc1 = nn.ModuleDict({f"{s}_": accuracy(top_k=1) for s in STAGES})
        self.acc5 = nn.ModuleDict({f"{s}_": accuracy(top_k=top5) for s in STAGES})

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's data config of the model (input size, mean, std, interpolation, crop), with this
        module's channels, input size and class count. Data modules read it to shape their data."""
        config = dict(timm.data.resolve_model_data_config(self.model))
        size = self.hparams.input_size if self.hparams.input_size is not None else config["input_size"][-1]
        config["input_size"] = (self.hparams.in_chans, size, size)
        config["num_classes"] = self.hparams.num_classes
        return config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: Stage) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        acc1, acc5 = self.acc1[f"{stage}_"], self.acc5[f"{stage}_"]
        acc1(logits, targets)
        acc5(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
        self.log(f"{stage}/acc1", acc1, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc5", acc5, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(-1)

    def setup(self, stage: str) -> None:
        # The data module is set up first (Lightning), so its class count is known here.
        check_data_classes(self.hparams.num_classes, self.trainer.datamodule)
        if stage == "fit":
            check_position_lr_owner(self.model, self.trainer.callbacks)

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = parameter_groups(self.model, h.weight_decay, h.no_weight_decay_norm_bias)
        optimizer = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov and h.momentum > 0)
        length = h.schedule_length
        if h.schedule == "linear" and length is None:
            length = self.trainer.max_epochs if h.schedule_interval == "epoch" else None
            length = length if length and length > 0 else int(self.trainer.estimated_stepping_batches)
        scheduler = build_schedule(optimizer, h.schedule, h.milestones, h.gamma, length)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": h.schedule_interval},
        }


def check_input_size(input_size: Any) -> None:
    """``input_size`` is None (the model's default) or a positive int; 0 is not "the default"."""
    if input_size is None:
        return
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(
            f"input_size must be a positive int (the square input side in pixels) or None for the model's "
            f"default, got {input_size!r}"
        )


def check_position_lr_owner(model: nn.Module, callbacks: list[Any]) -> None:
    """Refuse to train ACU positions without ``PositionLearningRate``: the optimizer
    ``configure_optimizers`` makes leaves them out, and the callback alone gives them their group."""
    if not any(p.requires_grad for p in position_parameters(model)):
        return
    if any(isinstance(c, PositionLearningRate) for c in callbacks):
        return
    raise ValueError(
        "the model has trainable ACU positions but the trainer has no PositionLearningRate callback, which "
        "gives them their optimizer group (lr = lr_mult x the weights' lr, no weight decay): add "
        "acuzoo.lit.PositionLearningRate to trainer.callbacks, or freeze the positions (freeze_positions: true)"
    )


def check_data_classes(num_classes: int, datamodule: Any) -> None:
    """Refuse data whose class count (a data module's ``num_classes``) differs from the head's:
    labels beyond the head fail inside the loss, and a head wider than the data is a mistaken config."""
    data_classes = getattr(datamodule, "num_classes", None)
    if data_classes is None or data_classes == num_classes:
        return
    raise ValueError(
        f"num_classes={num_classes} does not match the data: {type(datamodule).__name__} has {data_classes} "
        f"classes; set the model's num_classes to {data_classes} (model.num_classes in a config)"
    )


def build_model(
    model_name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    convert_depthwise: bool = False,
) -> nn.Module:
    """``timm.create_model`` (acuzoo's models are registered by importing acuzoo, which importing this
    module does); optionally turns depthwise convs into ACUs."""
    if not timm.is_model(model_name):
        raise ValueError(
            f"unknown model '{model_name}': not registered with timm "
            f"(acuzoo's: {', '.join(timm.list_models('*acu*')[:8])}, ...)"
        )
    try:
        model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {})
        )
    except Exception as err:
        # acuzoo's own models load from the local registry and say precisely what is wrong; timm's
        # would fetch from its hub, which offline machines cannot reach.
        if not pretrained or is_zoo_model(model_name):
            raise
        raise RuntimeError(
            f"could not load timm's pretrained weights for '{model_name}' ({type(err).__name__}: {err}); "
            "acuzoo does not download at run time: fetch the weights where a network is available and "
            "start from the file with init_weights_from=<path>, or use a published acuzoo checkpoint "
            "(checkpoints/manifest.json)"
        ) from err
    return convert_to_acu(model) if convert_depthwise else model
