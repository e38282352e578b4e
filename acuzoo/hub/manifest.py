"""Publishing to the checkpoint registry: writing files and manifest entries that never leave a
registry half-written or inconsistent.

Reading the registry (folders, ``manifest.json``, entries) is what building a model with its
pretrained file needs, so it lives with the models, in ``acuzoo.models._manifest``; its names are
re-exported here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..models._manifest import (
    ENV_VAR,
    MANIFEST_NAME,
    REQUIRED,
    CheckpointError,
    Entry,
    checkpoint_dir,
    find_entry,
    read_manifest,
    registry_folders,
    sha256_file,
)

__all__ = [
    "ENV_VAR",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "CheckpointError",
    "Entry",
    "check_new_file",
    "checkpoint_dir",
    "find_entry",
    "read_manifest",
    "registry_folders",
    "replacing",
    "sha256_file",
    "write_entry",
]

MANIFEST_FORMAT = 1


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: when the block ends without error it replaces
    ``path`` in one rename (readers see the old file or the new one, never a part of it); on any
    error it is removed and ``path`` is untouched."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _entries_using(folder: Path, file: str) -> list[Entry]:
    """The entries of ``<folder>/manifest.json`` (read and checked) whose file is ``file``; none without a manifest."""
    if not (folder / MANIFEST_NAME).exists():
        return []
    target = (folder / file).resolve()
    return [e for e in read_manifest(folder).values() if (folder / e.file).resolve() == target]


def check_new_file(folder: str | os.PathLike, name: str, file: str, update_manifest: bool) -> None:
    """Refuse, before anything is written, to write ``<folder>/<file>`` for entry ``name`` where that
    would break the registry there. With ``update_manifest`` (the entry will be added): a manifest that
    is not readable, or ``file`` already used by another entry. Without: ``file`` used by any entry of a
    readable manifest (that entry's sha256 would no longer match)."""
    folder = Path(folder)
    try:
        users = _entries_using(folder, file)
    except CheckpointError:
        if update_manifest:
            raise
        return  # not a registry this command touches
    others = sorted(e.name for e in users if not update_manifest or e.name != name)
    if not others:
        return
    manifest = folder / MANIFEST_NAME
    if update_manifest:
        raise CheckpointError(
            f"{folder / file} is the file of {', '.join(others)} in {manifest}; refusing to overwrite another "
            "entry's file (choose another output file)"
        )
    raise CheckpointError(
        f"{folder / file} is the file of {', '.join(others)} in {manifest}; overwriting it would leave that "
        "entry's sha256 wrong (add the manifest option to update the entry, or choose another output file)"
    )


def _checked_entry(entry: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if not isinstance(entry.get(k), str) or not entry[k]]
    if missing:
        raise ValueError(f"a manifest entry needs {', '.join(missing)} (strings); got {sorted(entry)}")


def write_entry(entry: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Add (or replace, by name) ``entry`` in ``<folder>/manifest.json``, creating it if needed.

    The manifest is checked first (a CheckpointError names it when it is malformed, or when another
    entry already uses ``entry['file']``) and replaced in one rename, so it is never left half-written.
    """
    _checked_entry(entry)
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    check_new_file(folder, entry["name"], entry["file"], update_manifest=True)
    data: dict[str, Any] = {"format": MANIFEST_FORMAT, "checkpoints": []}
    if path.exists():
        data = json.loads(path.read_text())  # read_manifest (in check_new_file) has checked it
    rows = [r for r in data["checkpoints"] if r["name"] != entry["name"]]
    data["checkpoints"] = sorted([*rows, entry], key=lambda r: r["name"])
    text = json.dumps(data, indent=2) + "\n"
    with replacing(path) as temporary:
        temporary.write_text(text)
    return path
