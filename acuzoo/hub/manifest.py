"""The checkpoint registry: a folder holding ``manifest.json`` and the safetensors files it lists.

The manifest is read only when weights are asked for (never at ``import acuzoo``). Which folder:
an explicit argument, else ``$ACUZOO_CHECKPOINTS``, else the repository's ``checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "ACUZOO_CHECKPOINTS"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# The published checkpoints live beside the package in a source checkout.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
# Fields every entry must have; the rest (metrics, commands, provenance) are documentation.
REQUIRED = ("name", "file", "sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, altered, truncated, or for another model."""


@dataclass(frozen=True)
class Entry:
    """One published checkpoint: ``name`` is ``<model>.<tag>`` as timm spells it."""

    name: str
    file: str
    sha256: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def model(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


def checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``path``, else ``$ACUZOO_CHECKPOINTS``, else the repository's."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(chosen).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike | None = None) -> dict[str, Entry]:
    """The entries of ``<folder>/manifest.json`` by name; a clear error when it is absent or malformed."""
    path = checkpoint_dir(folder) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint manifest at {path} (set {ENV_VAR} or pass checkpoint_dir= to point at a folder "
            f"holding {MANIFEST_NAME} and its .safetensors files)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from None
    rows = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise CheckpointError(f"{path}: expected an object with a 'checkpoints' list")
    entries = {}
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise CheckpointError(f"{path}: entry {i} lacks {', '.join(missing)}")
        info = {k: v for k, v in row.items() if k not in REQUIRED}
        entries[row["name"]] = Entry(row["name"], row["file"], row["sha256"].lower(), info)
    return entries


def find_entry(name: str, folder: str | os.PathLike | None = None) -> tuple[Entry, Path]:
    """The manifest entry called ``name`` (``<model>.<tag>``) and its file's path."""
    entries = read_manifest(folder)
    if name not in entries:
        model = name.partition(".")[0]
        same_model = sorted(n for n in entries if n.partition(".")[0] == model)
        hint = f"; {model} has: {', '.join(same_model)}" if same_model else f"; published: {', '.join(sorted(entries))}"
        raise CheckpointError(
            f"no checkpoint '{name}' in {checkpoint_dir(folder) / MANIFEST_NAME}{hint}. acuzoo never downloads "
            f"weights: put the file and a manifest entry in a folder and set {ENV_VAR}"
        )
    entry = entries[name]
    return entry, checkpoint_dir(folder) / entry.file


def write_entry(entry: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Add (or replace, by name) ``entry`` in ``<folder>/manifest.json``, creating it if needed."""
    path = Path(folder) / MANIFEST_NAME
    data: dict[str, Any] = {"format": MANIFEST_FORMAT, "checkpoints": []}
    if path.is_file():
        data = json.loads(path.read_text())
    rows = [r for r in data.get("checkpoints", []) if r.get("name") != entry["name"]]
    data["checkpoints"] = sorted([*rows, entry], key=lambda r: r["name"])
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
