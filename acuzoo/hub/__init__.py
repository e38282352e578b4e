"""Checkpoints: the registry of published weights, pretrained loading, weight conversion, export.

Importing this package reads no file; the manifest is read when weights are asked for. The
conversion and export modules (``acuzoo.hub.convert``, ``acuzoo.hub.export``) import the zoo and
are imported on their own, so that the model files can use the loader without a cycle.
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
