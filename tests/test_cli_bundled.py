"""The command line is whole: every subcommand listed, the bundled configs listed and usable by
name from any folder, ``python -m acuzoo`` the same command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from acuzoo.bundled import configs_dir, resolve_config
from acuzoo.cli import main, with_bundled_configs

EVERY_SUBCOMMAND = ("fit", "validate", "test", "predict", "convert", "export", "configs")


def test_acuzoo_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert set(EVERY_SUBCOMMAND) <= listed


def test_python_dash_m_acuzoo_is_the_same_command(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "acuzoo", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert all(f"  {name} " in run.stdout for name in EVERY_SUBCOMMAND)


def test_acuzoo_configs_lists_the_bundled_configs_with_their_purpose(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    (line,) = [row for row in out.splitlines() if row.split()[:1] == ["quickstart"]]
    assert "Fashion-MNIST" in line
    assert len([row for row in out.splitlines() if row.startswith("  ")]) == len(list(configs_dir().glob("*.yaml")))


@pytest.mark.parametrize("given", ["quickstart", "quickstart.yaml", "configs/quickstart.yaml"])
def test_a_bundled_config_is_found_by_name_with_or_without_yaml(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(given) == configs_dir() / "quickstart.yaml"
    bundled = str(configs_dir() / "quickstart.yaml")
    assert with_bundled_configs(["fit", "--config", given]) == ["fit", "--config", bundled]
    assert with_bundled_configs([f"--config={given}"]) == [f"--config={bundled}"]


def test_a_config_path_is_used_as_it_is(tmp_path, monkeypatch):
    own = tmp_path / "quickstart.yaml"
    own.write_text("model:\n  lr: 0.1\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config("quickstart.yaml").resolve() == own
    assert resolve_config(str(own)) == own


def test_an_unknown_config_is_one_line_with_a_suggestion(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "quikstart"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "quikstart" in err and "did you mean quickstart" in err and "Traceback" not in err


def test_fit_takes_a_bundled_config_by_name_from_another_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "acuzoo", "fit", "--config", "quickstart", "--print_config"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "model_name: mobilenetv2_acu_080" in run.stdout
