"""Checkpoints: weight conversion, export, publishing; and, re-exported, the registry and the
pretrained loader that the models use.

Layering: ``hub`` imports ``models``, never the reverse. Reading the registry and loading a
checkpoint at build time live in ``acuzoo.models._manifest`` and ``acuzoo.models._builder``;
this package adds what writes files (``save_checkpoint``, manifest entries, conversion, export).
Importing it reads no file; the manifest is read when weights are asked for.
"""

from .manifest import ENV_VAR, CheckpointError, checkpoint_dir, find_entry, read_manifest, sha256_file
from .pretrained import build_zoo_model, load_zoo_pretrained, read_checkpoint_metadata, save_checkpoint

__all__ = [
    "ENV_VAR",
    "CheckpointError",
    "build_zoo_model",
    "checkpoint_dir",
    "find_entry",
    "load_zoo_pretrained",
    "read_checkpoint_metadata",
    "read_manifest",
    "save_checkpoint",
    "sha256_file",
]
