"""The checkpoint registry, read side: a folder holding ``manifest.json`` and the safetensors files
it lists. What loading a published checkpoint at build time needs, so it sits beside the builder;
writing entries (publishing) is ``acuzoo.hub.manifest``'s job.

The manifest is read only when weights are asked for (never at ``import acuzoo``). Which folders:
an explicit argument alone; else each folder of ``$ACUZOO_CHECKPOINTS`` (``os.pathsep``-separated),
then the published checkpoints that ship with acuzoo (``acuzoo.bundled``). A name is taken from the
first folder that lists it, so the variable adds checkpoints and can override published ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundled import checkpoints_dir

__all__ = [
    "ENV_VAR",
    "MANIFEST_NAME",
    "REQUIRED",
    "CheckpointError",
    "Entry",
    "checkpoint_dir",
    "find_entry",
    "read_manifest",
    "registry_folders",
    "sha256_file",
]

ENV_VAR = "ACUZOO_CHECKPOINTS"
MANIFEST_NAME = "manifest.json"
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
    folder: Path | None = field(default=None, compare=False)  # the registry folder that lists it

    @property
    def model(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


def registry_folders(path: str | os.PathLike | None = None) -> list[Path]:
    """Where checkpoints are looked up, first match wins: ``path`` alone when given; else the folders
    of ``$ACUZOO_CHECKPOINTS``, then the published checkpoints shipped with acuzoo."""
    if path is not None:
        return [Path(path).expanduser()]
    added = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*added, checkpoints_dir()]


def checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    """The first registry folder: ``path``, else the first of ``$ACUZOO_CHECKPOINTS``, else the
    published checkpoints' folder."""
    return registry_folders(path)[0]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike | None = None) -> dict[str, Entry]:
    """The entries of ``<folder>/manifest.json`` by name, or, without ``folder``, of every registry
    folder (the first that lists a name wins); a clear error when one is absent or malformed."""
    merged: dict[str, Entry] = {}
    for one in reversed(registry_folders(folder)):
        merged.update(_read_folder(one))
    return merged


def _read_folder(folder: Path) -> dict[str, Entry]:
    path = folder / MANIFEST_NAME
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
        entries[row["name"]] = Entry(row["name"], row["file"], row["sha256"].lower(), info, folder)
    return entries


def find_entry(name: str, folder: str | os.PathLike | None = None) -> tuple[Entry, Path]:
    """The manifest entry called ``name`` (``<model>.<tag>``) and its file's path."""
    entries = read_manifest(folder)
    if name not in entries:
        model = name.partition(".")[0]
        same_model = sorted(n for n in entries if n.partition(".")[0] == model)
        hint = f"; {model} has: {', '.join(same_model)}" if same_model else f"; published: {', '.join(sorted(entries))}"
        looked = ", ".join(str(f / MANIFEST_NAME) for f in registry_folders(folder))
        raise CheckpointError(
            f"no checkpoint '{name}' in {looked}{hint}. acuzoo never downloads "
            f"weights: put the file and a manifest entry in a folder and set {ENV_VAR}"
        )
    entry = entries[name]
    return entry, (entry.folder or checkpoint_dir(folder)) / entry.file
