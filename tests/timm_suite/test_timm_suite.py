"""timm's own model test suite passes on acuzoo's models.

The suite is ``tests/test_models.py`` of the installed timm version's source distribution,
fetched with pip (never copied into this repository) and cached under
``~/.cache/acuzoo/timm-tests/<version>/``. It runs in a pytest subprocess with
``timm_suite_plugin`` (beside this file), which imports acuzoo and selects our models; its
docstring holds the rule for which tests cover which models. Without the network and without a
cached copy the test fails, saying so: a skipped suite would look like a passing one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE_ROOT = Path(os.environ.get("ACUZOO_CACHE", Path.home() / ".cache" / "acuzoo"))
CACHE = CACHE_ROOT / "timm-tests" / timm.__version__
SUITE_TIMEOUT_S = 1200


def fetch_timm_test_models() -> Path:
    """The cached ``test_models.py`` of timm's sdist, downloaded with pip on first use."""
    target = CACHE / "test_models.py"
    if target.exists():
        return target
    sdist_dir = CACHE / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", f"timm=={timm.__version__}",
        "--no-binary", ":all:", "--no-deps", "-d", str(sdist_dir), "-q",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    archives = sorted(sdist_dir.glob(f"timm-{timm.__version__}.tar.gz"))
    if result.returncode != 0 or not archives:
        pytest.fail(
            f"could not fetch timm {timm.__version__}'s source distribution from PyPI (needed for "
            f"timm's own model tests; is the network up?):\n{result.stderr[-2000:]}"
        )
    member = f"timm-{timm.__version__}/tests/test_models.py"
    with tarfile.open(archives[0]) as archive:
        try:
            source = archive.extractfile(member)
        except KeyError:
            pytest.fail(f"timm's sdist {archives[0].name} has no {member}")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(source.read())
        tmp.replace(target)  # atomic: a concurrent run never sees half a file
    return target


def run_suite(test_file: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "pytest", str(test_file), "-p", "timm_suite_plugin",
        "-q", "-p", "no:cacheprovider", "--rootdir", str(test_file.parent), "-c", os.devnull,
        "-W", "ignore::pytest.PytestUnknownMarkWarning", "-W", "ignore::DeprecationWarning",
        "-W", "ignore::FutureWarning",
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=test_file.parent, env=env, timeout=SUITE_TIMEOUT_S
    )


@pytest.mark.slow
def test_timm_model_suite_passes_on_every_zoo_model() -> None:
    result = run_suite(fetch_timm_test_models())
    tail = (result.stdout + result.stderr)[-6000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert result.returncode == 0, f"timm's test_models.py failed on acuzoo models:\n{tail}"
    assert passed and int(passed.group(1)) > 0, f"timm's suite ran no test:\n{tail}"
