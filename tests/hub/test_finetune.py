"""Fine-tuning a published checkpoint on a user's image folder, as the README tells it:
configs/finetune.yaml, a published ``<model>.fmnist`` with ``pretrained: true``, a new class count,
``--data.init_args.root`` at ``train/<class>/`` and ``val/<class>/`` folders of PNG files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from acuzoo.cli import AcuzooCLI
from acuzoo.hub import find_entry
from acuzoo.nn import ActiveConv2d

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = "mobilenetv2_acu_100.fmnist"
CLASSES = {1: "trouser", 5: "sandal", 8: "bag"}  # Fashion-MNIST labels -> folder names
PER_CLASS = {"train": 40, "val": 20}


def write_image_folder(root: Path) -> None:
    """Real Fashion-MNIST images as PNG files: train/ from its training split, val/ from its test split."""
    from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT, load_split

    for folder, split in (("train", "train"), ("val", "test")):
        try:
            images, labels = load_split(DEBIAN_ROOT, split)
        except FileNotFoundError:
            pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)")
        for label, name in CLASSES.items():
            (root / folder / name).mkdir(parents=True)
            picks = (labels == label).nonzero().flatten()[: PER_CLASS[folder]]
            for i in picks.tolist():
                Image.fromarray(images[i, 0].numpy(), mode="L").save(root / folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """(accuracy before, accuracy after, the fine-tuned module, the warnings logged) of a short run."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root)
    args = [
        "--config",
        str(REPO / "configs" / "finetune.yaml"),
        "--model.model_name",
        CHECKPOINT,
        "--model.pretrained",
        "true",
        "--model.num_classes",
        "3",
        "--model.in_chans",
        "1",
        "--data.init_args.root",
        str(root),
        "--data.init_args.batch_size",
        "16",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "4",
        "--model.schedule_length",
        "4",
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(root / "logs"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
    ]
    handler = logging.Handler()
    handler.records = []
    handler.emit = handler.records.append
    logging.getLogger("acuzoo").addHandler(handler)  # the loader logs under acuzoo.models
    try:
        cli = AcuzooCLI(args=args, run=False)
    finally:
        logging.getLogger("acuzoo").removeHandler(handler)
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]["val/acc1"]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]["val/acc1"]
    return before, after, cli.model, [r.getMessage() for r in handler.records]


def test_accuracy_rises_well_above_chance(finetuned):
    before, after, _, _ = finetuned
    assert after >= 0.8 > 1 / 3
    assert after > before + 0.2


def test_the_classifier_is_resized_to_the_folders_classes_and_the_user_is_told(finetuned):
    _, _, module, messages = finetuned
    assert module.model.get_classifier().out_features == 3
    assert any("classifier has 10 classes, the model 3" in m for m in messages)


def test_positions_keep_learning(finetuned):
    _, _, module, _ = finetuned
    entry, path = find_entry(CHECKPOINT)
    published = load_file(str(path))
    layers = {name: m for name, m in module.model.named_modules() if isinstance(m, ActiveConv2d)}
    moved = [n for n, m in layers.items() if not torch.equal(m.positions.detach(), published[f"{n}.positions"])]
    assert layers and len(moved) == len(layers)
