"""A Lightning checkpoint of ours -> a safetensors file that timm loads (and back into training as
a weights-only start); ``acuzoo convert --from-ckpt``."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import timm
import torch

from acuzoo.hub import sha256_file
from acuzoo.hub.commands import convert_main
from acuzoo.hub.manifest import read_manifest
from acuzoo.lit import ImageClassifier, PositionLearningRate, SyntheticData


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(LightningModule, .ckpt path) after two optimizer steps of a small ACU run."""
    folder = tmp_path_factory.mktemp("run")
    pl.seed_everything(0)
    module = ImageClassifier("cifar_resnet29_acu", num_classes=4, in_chans=1, input_size=16, lr=0.5)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[PositionLearningRate()],
    )
    trainer.fit(module, datamodule=SyntheticData(num_samples=16, num_classes=4, batch_size=8))
    trainer.save_checkpoint(folder / "run.ckpt")
    return module.eval(), folder / "run.ckpt"


def _x() -> torch.Tensor:
    return torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def test_ckpt_becomes_a_safetensors_file_with_a_manifest_entry(trained, tmp_path):
    _, ckpt = trained
    entry = convert_main(
        ["--from-ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors"), "--tag", "mine", "--manifest"]
    )
    assert entry["name"] == "cifar_resnet29_acu.mine"
    assert entry["sha256"] == sha256_file(tmp_path / "m.safetensors")
    assert read_manifest(tmp_path)["cifar_resnet29_acu.mine"].sha256 == entry["sha256"]
    assert (entry["num_classes"], entry["in_chans"]) == (4, 1)


def test_timm_loads_the_converted_file_with_the_trained_outputs(trained, tmp_path):
    module, ckpt = trained
    convert_main(["--from-ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors")])
    model = timm.create_model(
        "cifar_resnet29_acu", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "m.safetensors")}
    ).eval()
    assert (model.num_classes, model.in_chans) == (4, 1)  # sized from the file
    with torch.no_grad():
        assert torch.equal(model(_x()), module(_x()))


def test_the_converted_file_starts_a_new_training_run_weights_only(trained, tmp_path):
    module, ckpt = trained
    convert_main(["--from-ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors")])
    file = str(tmp_path / "m.safetensors")
    restarted = ImageClassifier("cifar_resnet29_acu", num_classes=4, in_chans=1, input_size=16, init_weights_from=file)
    restarted.eval()
    with torch.no_grad():
        assert torch.equal(restarted(_x()), module(_x()))


def test_a_file_that_is_not_an_image_classifier_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other.ckpt: not a Lightning checkpoint of ImageClassifier"):
        convert_main(["--from-ckpt", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "m.safetensors")])
