"""The native CPU library that a wheel carries prebuilt (``acuzoo/ops/_prebuilt/``).

A wheel is built against one torch; its library is used only where it matches: the same torch
and Python, the same kernel sources as this installation, and a CPU with the vector units it was
compiled for. Anything else falls back to the just-in-time build (``native.load``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PREBUILT_DIR = Path(__file__).with_name("_prebuilt")
LIBRARY_NAME = "acuzoo_native_cpu.so"
INFO_NAME = "acuzoo_native_cpu.json"


def sources_digest(files: list[Path]) -> str:
    """sha256 over the kernel sources (names and contents), so a changed source never loads an old library."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cpu_features() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def required_features(cflags: list[str]) -> list[str]:
    """The CPU features that ``-mavx2``-style flags make a library need."""
    return sorted(f[2:] for f in cflags if f.startswith("-m") and f[2:].startswith(("avx", "fma")))


@dataclass(frozen=True)
class Prebuilt:
    """A prebuilt library and what it was built for."""

    library: Path
    torch: str
    python: str
    sources: str
    features: tuple[str, ...]

    def mismatch(self, sources: str) -> str | None:
        """Why this library cannot serve this process, or None when it can."""
        if self.torch != torch.__version__:
            return f"built for torch {self.torch}, running torch {torch.__version__}"
        if self.python != python_tag():
            return f"built for Python {self.python}, running Python {python_tag()}"
        if self.sources != sources:
            return "built from other kernel sources than these"
        missing = sorted(set(self.features) - cpu_features()) if platform.machine() in ("x86_64", "AMD64") else []
        if missing:
            return f"built for CPU features this CPU lacks: {', '.join(missing)}"
        return None


def find_prebuilt(folder: Path = PREBUILT_DIR) -> Prebuilt | None:
    """The prebuilt library in ``folder`` with its build record, or None when there is none."""
    info_path, library = folder / INFO_NAME, folder / LIBRARY_NAME
    if not (info_path.is_file() and library.is_file()):
        return None
    info = json.loads(info_path.read_text())
    return Prebuilt(library, info["torch"], info["python"], info["sources"], tuple(info.get("features", ())))


def write_prebuilt(library: Path, folder: Path, sources: str, cflags: list[str]) -> Path:
    """Copy a built library into ``folder`` with its build record (the wheel build calls this)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / LIBRARY_NAME
    target.write_bytes(library.read_bytes())
    record = {
        "torch": torch.__version__,
        "python": python_tag(),
        "sources": sources,
        "features": required_features(cflags),
        "cflags": cflags,
    }
    (folder / INFO_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return target
