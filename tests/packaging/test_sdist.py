"""The source distribution holds what building and testing need, and the license."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("sdist")
    command = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), "."]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    (archive,) = out.glob("acuzoo-*.tar.gz")
    with tarfile.open(archive) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_has_license_build_files_and_kernel_sources(sdist_names):
    assert {"LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "constraints.txt"} <= sdist_names
    csrc = ROOT / "acuzoo/ops/csrc"
    expected_sources = {str(p.relative_to(ROOT)) for p in csrc.rglob("*") if p.is_file() and p.suffix != ".pyc"}
    assert {"acuzoo/ops/csrc/cpu/depthwise_blocks.cpp", "acuzoo/ops/csrc/cuda/kernels.cu"} <= expected_sources
    assert expected_sources <= sdist_names


def test_sdist_has_the_tests_the_configs_and_the_checkpoints_manifest(sdist_names):
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")}
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml")}
    assert tests <= sdist_names
    assert configs <= sdist_names
    assert "checkpoints/manifest.json" in sdist_names
