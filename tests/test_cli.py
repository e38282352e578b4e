"""The ``acuzoo`` command / train.py: LightningCLI subcommands, registered extra subcommands, the
defaults a user expects, fit-then-test, resume with --ckpt_path."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from acuzoo import cli

MODEL = "cifar_resnet29_acu"


def tiny_run(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"--model.model_name={MODEL}",
        "--data=acuzoo.lit.SyntheticData",
        "--data.num_samples=8",
        "--data.batch_size=4",
        "--data.image_size=8",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=acuzoo.lit.PositionLearningRate",  # the ACU positions' lr
        "--run_name=tiny",
        *extra,
    ]


def test_console_script_points_at_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    entry = next((e for e in scripts if e.name == "acuzoo"), None)
    assert entry is not None, "acuzoo is not installed as a distribution (run scripts/setup.sh)"
    assert entry.value == "acuzoo.cli:main"


def test_registered_subcommands_get_their_own_handler(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", seen.append)
    cli.main(["echo", "a", "--b"])
    assert seen == [["a", "--b"]]


def test_lightning_subcommand_names_cannot_be_taken():
    with pytest.raises(ValueError, match="LightningCLI subcommand"):
        cli.subcommand("fit")


def test_unknown_subcommand_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code != 0


def test_fit_with_test_after_fit_writes_logs_checkpoints_plot_and_test_metrics(tmp_path):
    plot = ["--trainer.callbacks+=acuzoo.lit.PositionPlot"]
    cli.main(["fit", *tiny_run(tmp_path, "--test_after_fit=true", *plot)])
    run = tmp_path / "tiny" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt")), "best checkpoint by val/acc1"
    assert (run / "positions" / "final.png").is_file()
    metrics = (run / "metrics.csv").read_text()
    assert "test/acc1" in metrics and "val/acc1" in metrics
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard logs beside the CSV"
    assert (run / "config.yaml").is_file()


def test_fit_resumes_from_ckpt_path_at_the_step_it_stopped(tmp_path):
    cli.main(["fit", *tiny_run(tmp_path)])
    last = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    cli.main(["fit", *tiny_run(tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={last}")])
    resumed = tmp_path / "tiny" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["global_step"] == 4


# --- user errors: one line naming the file and the problem, exit status 2, --debug for the traceback -------------


def _error_lines(argv: list[str], capsys) -> list[str]:
    """stderr of ``acuzoo ...``, which must end with exit status 2."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_missing_config_file_is_named_in_two_lines(tmp_path, capsys):
    lines = _error_lines(["fit", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert len(lines) <= 2
    (error,) = [line for line in lines if "error:" in line]
    assert "missing.yaml" in error and "does not exist" in error


def test_an_error_raised_while_fit_builds_the_model_is_one_line_without_traceback(tmp_path, capsys):
    lines = _error_lines(["fit", *tiny_run(tmp_path), "--model.model_name=no_such_model"], capsys)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("acuzoo fit: error:") and "no_such_model" in errors[0]
    assert not any("Traceback" in line for line in lines)


def test_fit_refuses_trainable_positions_without_their_lr_callback_in_one_line(tmp_path, capsys):
    argv = [a for a in tiny_run(tmp_path) if "PositionLearningRate" not in a]
    lines = _error_lines(["fit", *argv], capsys)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("acuzoo fit: error:")
    assert "add acuzoo.lit.PositionLearningRate to trainer.callbacks" in errors[0]
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_missing_file_in_convert_is_one_line_naming_it(tmp_path, capsys):
    ckpt = tmp_path / "missing.ckpt"
    lines = _error_lines(["convert", "--from-ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors")], capsys)
    assert lines[0].startswith("acuzoo convert: error:") and str(ckpt) in lines[0]
    assert len(lines) <= 2


def test_debug_shows_the_error_with_its_traceback(tmp_path):
    ckpt = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        cli.main(["convert", "--from-ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors"), "--debug"])


def test_an_unknown_subcommand_lists_every_subcommand(capsys):
    lines = _error_lines(["no-such-command"], capsys)
    assert len(lines) == 1 and "'no-such-command'" in lines[0]
    assert all(name in lines[0] for name in ("fit", "validate", "test", "predict", "convert", "export"))


def last_checkpoint(root: Path, version: int = 0) -> dict:
    return torch.load(root / "tiny" / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True)


def test_last_ckpt_holds_the_final_step_when_val_acc1_does_not_improve(tmp_path):
    # lr 0: the weights never change, so every epoch's val/acc1 ties the first (the best).
    cli.main(["fit", *tiny_run(tmp_path, "--trainer.max_epochs=3", "--model.lr=0")])
    assert last_checkpoint(tmp_path)["global_step"] == 6
    best = next((tmp_path / "tiny" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert torch.load(best, weights_only=True)["global_step"] == 2


@pytest.fixture(scope="module")
def uninterrupted_six_steps(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    cli.main(["fit", *tiny_run(root, "--trainer.max_epochs=-1", "--trainer.max_steps=6")])
    return last_checkpoint(root)


@pytest.mark.parametrize("stop_after", [4, 3], ids=["epoch-boundary", "mid-epoch"])
def test_fit_resumed_from_last_ckpt_ends_as_the_uninterrupted_run(tmp_path, uninterrupted_six_steps, stop_after):
    # 8 samples in batches of 4: 2 steps an epoch.
    cli.main(["fit", *tiny_run(tmp_path, "--trainer.max_epochs=-1", f"--trainer.max_steps={stop_after}")])
    last = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    cli.main(["fit", *tiny_run(tmp_path, "--trainer.max_epochs=-1", "--trainer.max_steps=6", f"--ckpt_path={last}")])
    straight, resumed = uninterrupted_six_steps, last_checkpoint(tmp_path, version=1)
    assert (resumed["global_step"], resumed["epoch"]) == (straight["global_step"], straight["epoch"]) == (6, 2)
    for name, value in straight["state_dict"].items():  # weights, positions, BatchNorm statistics
        assert torch.equal(resumed["state_dict"][name], value), name
    momenta = [[s["momentum_buffer"] for s in c["optimizer_states"][0]["state"].values()] for c in (straight, resumed)]
    assert all(torch.equal(a, b) for a, b in zip(*momenta))
