"""DataModules: Fashion-MNIST (Debian's files or torchvision's layout), CIFAR, image folders,
shaped to the model's input; missing or malformed data named with the expected layout."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from acuzoo.lit import CIFARData, FashionMNISTData, ImageFolderData, SyntheticData
from acuzoo.lit.data import fashion_mnist

DEBIAN = Path(fashion_mnist.DEBIAN_ROOT)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def tiny_fashion_root(root: Path, n: int = 12) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return root


def attach_model_input(dm, input_size) -> None:
    # What a Trainer provides: the LightningModule, whose data_config names the input.
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(data_config={"input_size": input_size}))


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_reads_debians_files_with_a_held_out_validation_split():
    dm = FashionMNISTData(val_size=5000)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    image, label = dm.test_set[0]
    assert image.shape == (1, 28, 28) and 0 <= int(label) < 10


def test_fashion_mnist_reads_torchvisions_layout(tmp_path):
    dm = FashionMNISTData(root=str(tiny_fashion_root(tmp_path)), val_size=2, batch_size=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 2, 12)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 28, 28) and labels.dtype == torch.int64


def test_fashion_mnist_is_padded_to_the_models_input_with_three_equal_channels(tmp_path):
    dm = FashionMNISTData(root=str(tiny_fashion_root(tmp_path)), val_size=0, augment=False)
    attach_model_input(dm, (3, 32, 32))
    dm.setup("test")
    image, _ = dm.test_set[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    # Zero padding: the 2-pixel border is the normalized black background.
    assert torch.allclose(image[0, :2], torch.full((2, 32), -fashion_mnist.MEAN / fashion_mnist.STD))


def test_fashion_mnist_is_resized_when_the_model_wants_a_smaller_input(tmp_path):
    dm = FashionMNISTData(root=str(tiny_fashion_root(tmp_path)), image_size=16, channels=1)
    dm.setup("test")
    assert dm.test_set[0][0].shape == (1, 16, 16)


@pytest.mark.parametrize("crop_padding", [0, 4])
def test_fashion_mnist_training_images_are_flipped_and_shifted_only_with_a_crop_padding(tmp_path, crop_padding):
    dm = FashionMNISTData(root=str(tiny_fashion_root(tmp_path)), val_size=0, crop_padding=crop_padding)
    attach_model_input(dm, (1, 28, 28))
    dm.setup("fit")
    plain = FashionMNISTData(root=str(tiny_fashion_root(tmp_path / "plain")), val_size=0, augment=False)
    attach_model_input(plain, (1, 28, 28))
    plain.setup("fit")
    torch.manual_seed(0)
    kinds = set()
    for i in range(len(dm.train_set)):
        for _ in range(8):
            image, reference = dm.train_set[i][0], plain.train_set[i][0]
            kinds.add("same" if torch.equal(image, reference) else "mirror" if torch.equal(image, reference.flip(-1))
                      else "shifted")
    assert kinds == ({"same", "mirror"} if crop_padding == 0 else {"same", "mirror", "shifted"})


def test_fashion_mnist_refuses_a_negative_crop_padding():
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        FashionMNISTData(crop_padding=-2)


def test_fashion_mnist_missing_root_names_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere.*FashionMNIST/raw"):
        FashionMNISTData(root=str(tmp_path / "nowhere")).setup("fit")


def test_fashion_mnist_truncated_file_is_named(tmp_path):
    root = tiny_fashion_root(tmp_path)
    path = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated"):
        FashionMNISTData(root=str(root)).setup("fit")


def tiny_cifar_root(root: Path, n: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def test_cifar_reads_torchvisions_batches_and_augments_to_32(tmp_path):
    dm = CIFARData(root=str(tiny_cifar_root(tmp_path)), batch_size=8, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.test_set) == 8
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    # The paper validates on the test split (val_size 0).
    assert dm.val_dataloader().dataset is dm.test_set


def test_cifar_missing_without_download_names_the_layout_and_the_switch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)cifar-10-batches-py.*data_batch_1.*download"):
        CIFARData(root=str(tmp_path)).prepare_data()


def test_cifar_download_failure_offline_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", offline)
    with pytest.raises(RuntimeError, match=r"(?s)downloading CIFAR-10.*failed.*by hand"):
        CIFARData(root=str(tmp_path), download=True).prepare_data()


def test_cifar_malformed_batch_is_named(tmp_path):
    root = tiny_cifar_root(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch is malformed"):
        CIFARData(root=str(root), num_workers=0).setup("test")


def tiny_image_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (48, 40), (i * 100, 50, 200)).save(folder / f"{i}.png")
    return root


def test_image_folder_crops_train_and_uses_timms_eval_transform_of_the_model(tmp_path):
    dm = ImageFolderData(root=str(tiny_image_folder(tmp_path)), batch_size=2, num_workers=0)
    config = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.875}
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(data_config=config))
    dm.setup("fit")
    assert dm.num_classes == 2 and len(dm.train_set) == 4
    assert next(iter(dm.train_dataloader()))[0].shape == (2, 3, 32, 32)
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 3, 32, 32)


def test_image_folder_without_val_names_the_expected_layout(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"(?s)val is missing.*<root>/train/<class>/<image>"):
        ImageFolderData(root=str(tmp_path)).setup("fit")


def test_synthetic_data_takes_the_models_input_shape():
    dm = SyntheticData(num_samples=4, batch_size=2)
    attach_model_input(dm, (1, 20, 20))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (2, 1, 20, 20)


# --- Bad data fails early and names the culprit (issue 16, point 5) ---


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_png(folder: Path) -> Path:
    path = folder / "1.png"
    cut_in_half(path)
    return path


def break_jpeg(folder: Path) -> Path:
    path = folder / "1.jpg"
    Image.new("RGB", (48, 40), (10, 50, 200)).save(path)
    cut_in_half(path)
    return path


def not_an_image(folder: Path) -> Path:
    path = folder / "1.png"
    path.write_bytes(b"this is not a png")
    return path


@pytest.mark.parametrize(
    "damage", [break_png, break_jpeg, not_an_image], ids=["truncated-png", "truncated-jpeg", "garbage"]
)
def test_image_folder_unreadable_image_is_named(tmp_path, damage):
    root = tiny_image_folder(tmp_path)
    bad = damage(root / "train" / "dog")
    dm = ImageFolderData(root=str(root), batch_size=1, num_workers=0, image_size=16)
    dm.setup("fit")
    with pytest.raises(OSError, match=f"cannot read {re.escape(str(bad))}.*corrupt, truncated or not an image"):
        list(dm.train_dataloader())


def test_image_folder_unreadable_image_is_named_from_a_worker(tmp_path):
    root = tiny_image_folder(tmp_path)
    bad = break_png(root / "val" / "cat")
    dm = ImageFolderData(root=str(root), batch_size=8, num_workers=1, image_size=16)
    dm.setup("fit")
    with pytest.raises(OSError, match=f"cannot read {re.escape(str(bad))}"):
        next(iter(dm.val_dataloader()))


def test_image_folder_knows_its_class_count_for_test_alone(tmp_path):
    dm = ImageFolderData(root=str(tiny_image_folder(tmp_path)), num_workers=0, image_size=16)
    dm.setup("test")
    assert dm.num_classes == 2


def test_fashion_mnist_labels_outside_the_classes_are_refused_naming_the_file(tmp_path):
    root = tiny_fashion_root(tmp_path)
    labels = np.arange(12) % 10
    labels[7] = 10
    write_idx(root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", labels, compress=False)
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte: 1 labels outside \[0, 10\), the first 10 at index 7"
    ):
        FashionMNISTData(root=str(root), val_size=2).setup("fit")


def test_fashion_mnist_truncated_gzip_file_is_named(tmp_path):
    root = tiny_fashion_root(tmp_path)
    raw = root / "FashionMNIST" / "raw"
    (raw / "t10k-images-idx3-ubyte").unlink()
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((12, 28, 28)), compress=True)
    cut_in_half(raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is a truncated or corrupt gzip file"):
        FashionMNISTData(root=str(root)).setup("test")


def test_fashion_mnist_gz_file_that_is_not_gzip_is_named(tmp_path):
    root = tiny_fashion_root(tmp_path)
    raw = root / "FashionMNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").rename(raw / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz is named \.gz but is not a gzip file"):
        FashionMNISTData(root=str(root)).setup("test")


def test_fashion_mnist_truncated_header_is_named(tmp_path):
    root = tiny_fashion_root(tmp_path)
    path = root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:9])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is truncated"):
        FashionMNISTData(root=str(root)).setup("test")


def test_cifar_labels_outside_the_classes_are_refused_naming_the_file(tmp_path):
    root = tiny_cifar_root(tmp_path, n=12)  # labels 0..11 on CIFAR-10
    with pytest.raises(ValueError, match=r"data_batch_1 has 2 labels outside \[0, 10\), the first 10 at index 10"):
        CIFARData(root=str(root), num_workers=0).setup("fit")


@pytest.mark.parametrize("field", ["image_size", "channels"])
@pytest.mark.parametrize("value", [0, -2])
def test_a_zero_or_negative_image_size_or_channel_count_is_refused_naming_it(field, value):
    from acuzoo.lit.data.synthetic import SyntheticData

    with pytest.raises(ValueError, match=field):
        SyntheticData(**{field: value})
