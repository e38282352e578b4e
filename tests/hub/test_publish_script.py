"""checkpoints/publish.py refuses to publish a run under a config it was not trained with: the
manifest names the committed config as the recipe, so the run's own saved config must agree."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture(scope="module")
def publish():
    spec = importlib.util.spec_from_file_location("publish_script", CHECKPOINTS / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def committed() -> dict:
    return yaml.safe_load((CHECKPOINTS / "configs" / "fmnist_mobilenetv2_acu_100.yaml").read_text())


def test_a_run_of_the_committed_recipe_passes_whatever_its_name_folder_or_seed(publish, committed) -> None:
    saved = copy.deepcopy(committed)
    saved.update(seed_everything=3, run_name="elsewhere")
    saved["trainer"]["default_root_dir"] = "/tmp/runs"
    publish.check_trained_as_committed(saved, committed, Path("version_0"))


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("model", "weight_decay", 1.0e-4, "optimizer"),
        ("model", "input_size", 48, "input"),
        ("trainer", "max_epochs", 8, "length"),
        ("model", "model_name", "mobilenetv2_conv_100", "model"),
    ],
)
def test_a_run_trained_otherwise_is_refused_naming_the_difference(
    publish, committed, section, key, value, named
) -> None:
    saved = copy.deepcopy(committed)
    saved[section][key] = value
    with pytest.raises(ValueError, match=f"not trained with the committed config: {named}: run"):
        publish.check_trained_as_committed(saved, committed, Path("version_0"))


def test_a_run_with_other_augmentation_is_refused(publish, committed) -> None:
    saved = copy.deepcopy(committed)
    saved["data"]["init_args"]["crop_padding"] = 4
    with pytest.raises(ValueError, match="augmentation: run 'random crop"):
        publish.check_trained_as_committed(saved, committed, Path("version_0"))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ((), None),
        (("best-epoch009-step4530.ckpt", "last.ckpt"), None),
        (("best-epoch007-step3624.ckpt", "last.ckpt"), "best-epoch007-step3624.ckpt"),
    ],
)
def test_the_runs_own_test_figure_is_kept_only_for_the_last_weights(publish, tmp_path, files, expected) -> None:
    (tmp_path / "checkpoints").mkdir()
    for name in files:
        (tmp_path / "checkpoints" / name).touch()
    assert publish.lightning_test_checkpoint(tmp_path, 4530) == expected
    figures = publish.lightning_test(tmp_path, {"step": 4530, "test/acc1": 0.9246})
    assert ("lightning_test_acc1" in figures) == (expected is None)
    if expected is not None:
        assert expected in figures["lightning_note"]


def test_the_command_line_refuses_an_unknown_run_before_writing_anything(publish, capsys) -> None:
    with pytest.raises(SystemExit):
        publish.parse_args(["resnet29"])
    assert "unknown run resnet29" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        publish.parse_args(["--measure", "cifar_resnet29_acu.fmnist", "--remeasure", "cifar_resnet29_acu.fmnist"])


def test_the_command_line_names_runs_and_how_they_ran(publish) -> None:
    assert publish.parse_args([]).runs == [] and publish.parse_args([]).hardware == publish.HARDWARE
    args = publish.parse_args(["resnet29_conv3", "resnet29_acu", "--hardware", "side-by-side"])
    assert args.runs == ["resnet29_conv3", "resnet29_acu"] and args.hardware == publish.SIDE_BY_SIDE
    assert publish.parse_args(["--measure", "a.fmnist", "b.fmnist"]).measure == ["a.fmnist", "b.fmnist"]


def test_the_recipe_says_28_px_images_are_used_as_they_are(publish, committed) -> None:
    native = copy.deepcopy(committed)
    native["model"]["input_size"] = 28
    assert publish.recipe(native)["input"] == "28 px, as they are"
    assert publish.recipe(committed)["input"] == "64 px, resize"
