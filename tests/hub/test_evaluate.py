"""acuzoo.hub.evaluate: accuracy through timm's own eval transform of the model's data config, on
PIL grey images, the way the published checkpoints are measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from acuzoo.hub.evaluate import pil_images, timm_eval_transform, top1_accuracy


class Constant(nn.Module):
    """Predicts one class; remembers the input shapes it saw."""

    def __init__(self, label: int, input_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.label, self.seen = label, []
        self.pretrained_cfg = {"input_size": input_size, "crop_pct": 1.0, "interpolation": "bilinear",
                               "mean": (0.5,), "std": (0.25,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        out = torch.zeros(len(x), 10)
        out[:, self.label] = 1
        return out


def test_images_become_grey_pil_images_of_the_same_pixels() -> None:
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    pil = pil_images(images)
    assert [p.mode for p in pil] == ["L"] * 3 and pil[0].size == (28, 28)
    assert torch.equal(torch.from_numpy(np.array(pil[2])), images[2, 0])
    assert len(pil_images(images[:, 0])) == 3


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 8), torch.zeros(8)])
def test_images_that_are_not_uint8_grey_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="uint8 grey images of shape"):
        pil_images(bad)


def test_the_transform_is_timms_for_the_models_config() -> None:
    model = Constant(0, (1, 48, 48))
    x = timm_eval_transform(model)(Image.new("L", (28, 28), 255))
    assert x.shape == (1, 48, 48)
    assert torch.allclose(x, torch.full_like(x, (1 - 0.5) / 0.25))  # timm's Normalize, the model's mean/std


def test_accuracy_counts_plain_top1_and_restores_training_mode() -> None:
    labels = torch.tensor([3, 3, 1, 3, 0])
    model = Constant(3, (1, 32, 32)).train()
    images = pil_images(torch.zeros(5, 28, 28, dtype=torch.uint8))
    assert top1_accuracy(model, images, labels, batch_size=2) == pytest.approx(60.0)
    assert model.training and model.seen == [(2, 1, 32, 32), (2, 1, 32, 32), (1, 1, 32, 32)]


def test_mismatched_or_empty_inputs_are_refused() -> None:
    model = Constant(0, (1, 28, 28))
    with pytest.raises(ValueError, match="as many"):
        top1_accuracy(model, pil_images(torch.zeros(2, 28, 28, dtype=torch.uint8)), torch.tensor([0]))
    with pytest.raises(ValueError, match="batch_size"):
        top1_accuracy(model, pil_images(torch.zeros(1, 28, 28, dtype=torch.uint8)), torch.tensor([0]), batch_size=0)
