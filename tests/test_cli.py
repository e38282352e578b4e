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
