"""The wheel as a user meets it: built from this checkout, installed apart from it, used from another
folder with an empty kernel cache and no checkpoint variable. Its dependencies come from the project's
environment (``--no-deps``), so the test costs seconds, not a second torch install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = [
    "cifar_resnet29_conv3.fmnist",
    "cifar_resnet29_acu.fmnist",
    "mobilenetv2_conv_100.fmnist",
    "mobilenetv2_acu_100.fmnist",
]
SUBSET = 1000
TOLERANCE = 0.2  # accuracy points, as tests/hub/test_published.py

# Run inside the installed wheel: the published checkpoints re-measured on the first 1,000 test
# images, and where acuzoo and its native library came from.
USER_SCRIPT = """
import json, sys
import timm, torch
import acuzoo
from acuzoo.hub import read_manifest
from acuzoo.hub.evaluate import fmnist_test_accuracy
from acuzoo.ops import native

torch.set_num_threads(1)
names, subset = json.loads(sys.argv[1]), int(sys.argv[2])
manifest = read_manifest()
report = {"acuzoo": acuzoo.__file__, "accuracy": {}, "manifest": {}}
for name in names:
    # A timm user's measurement: the tag's data config, timm's eval transform, PIL grey images.
    model = timm.create_model(name, pretrained=True)
    report["accuracy"][name] = fmnist_test_accuracy(model, subset)
    report["manifest"][name] = manifest[name].info["metrics"]["subset_acc1"]
report["native"] = native.library_info()
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out), "."]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    (found,) = out.glob("acuzoo-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return target


def _user_env(installed: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACUZOO_")}
    env["PYTHONPATH"] = str(installed)
    env["ACUZOO_CACHE_DIR"] = str(tmp_path / "empty-cache")
    return env


def test_the_wheel_is_a_platform_wheel_with_license_weights_configs_and_kernels(wheel):
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "acuzoo/_data/checkpoints/manifest.json" in names
    assert all(f"acuzoo/_data/checkpoints/{n}.safetensors" in names for n in PUBLISHED)
    assert "acuzoo/_data/configs/quickstart.yaml" in names
    assert {"acuzoo/ops/_prebuilt/acuzoo_native_cpu.so", "acuzoo/ops/_prebuilt/acuzoo_native_cpu.json"} <= set(names)


def test_installed_wheel_loads_every_published_checkpoint_offline_with_its_accuracy_and_compiles_nothing(
    installed, tmp_path
):
    from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT

    if not (Path(DEBIAN_ROOT) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    env = _user_env(installed, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT, json.dumps(PUBLISHED), str(SUBSET)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [row for row in result.stdout.splitlines() if row.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    assert Path(report["acuzoo"]).is_relative_to(installed)
    for name in PUBLISHED:
        assert abs(report["accuracy"][name] - report["manifest"][name]) <= TOLERANCE, name
    assert report["native"]["prebuilt"], report["native"]
    assert Path(report["native"]["library"]).is_relative_to(installed)
    assert "compiling" not in result.stderr
    cache = tmp_path / "empty-cache"
    assert not cache.exists() or not any(cache.iterdir()), "the first forward compiled something"


def test_installed_wheel_trains_two_steps_of_the_bundled_quickstart_from_another_folder(installed, tmp_path):
    from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT

    if not (Path(DEBIAN_ROOT) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    env = _user_env(installed, tmp_path)
    command = [
        sys.executable, "-m", "acuzoo", "fit", "--config", "quickstart",
        "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = (tmp_path / "lightning_logs" / "quickstart").glob("version_*/checkpoints/last.ckpt")
    assert last.is_file()
    assert "compiling" not in result.stderr
