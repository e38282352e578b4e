"""Build hooks that pyproject.toml cannot express.

- The wheel carries ``configs/`` and ``checkpoints/`` (manifest, weights, their configs) as package
  data under ``acuzoo/_data/``, copied from the repository's top-level folders at build time.
- The wheel carries the C++ (CPU) kernels prebuilt, compiled with torch's extension tooling
  against the torch of the build environment, so it is a platform wheel. An editable install
  (the checkout's ``scripts/setup.sh``) builds neither: it reads the folders in place and
  compiles the kernels just in time.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What of checkpoints/ is product (publishing scripts stay in the repository).
CHECKPOINT_FILES = ("manifest.json", "README.md", "*.safetensors", "configs/*.yaml")


def _ops_module(name: str, ops: Path):
    """``acuzoo/ops/<name>.py`` as a module of a stand-in package over that folder, so that its
    relative imports resolve among its siblings without importing acuzoo (and its dependencies)."""
    package = "acuzoo_build_ops"
    if package not in sys.modules:
        stand_in = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(package, None, is_package=True))
        stand_in.__path__ = [str(ops)]
        sys.modules[package] = stand_in
    return importlib.import_module(f"{package}.{name}")


def _native_modules():
    """acuzoo.ops.native and native_prebuilt, loaded from their files without importing acuzoo."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "building an acuzoo wheel compiles its CPU kernels against torch, which this build environment "
            "lacks: install torch, then build with `pip wheel --no-build-isolation .`"
        ) from None
    ops = ROOT / "acuzoo" / "ops"
    return _ops_module("native", ops), _ops_module("native_prebuilt", ops)


class BuildPyWithData(build_py):
    """build_py, plus the bundled folders and the prebuilt CPU library (not in editable mode)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "acuzoo"
        self._copy_tree(ROOT / "configs", package / "_data" / "configs", ("*.yaml",))
        self._copy_tree(ROOT / "checkpoints", package / "_data" / "checkpoints", CHECKPOINT_FILES)
        self._build_native(package / "ops" / "_prebuilt")

    def _copy_tree(self, source: Path, target: Path, patterns: tuple[str, ...]) -> None:
        for pattern in patterns:
            for path in sorted(source.glob(pattern)):
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)

    def _build_native(self, target: Path) -> None:
        native, prebuilt = _native_modules()
        library = native.build_library("cpu")
        sources = prebuilt.sources_digest(native.source_files("cpu"))
        prebuilt.write_prebuilt(library, target, sources, native.cpu_flags())
        print(f"acuzoo: prebuilt CPU kernels {library.name} -> {target}")


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform and Python."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithData}, distclass=BinaryDistribution)
