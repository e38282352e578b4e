"""Writing zoo checkpoints: a model's weights as a safetensors file with the metadata the loader
checks. Loading them (``build_zoo_model``, ``load_zoo_pretrained``, ``create_pretrained``) is what
building a model needs, so it lives with the models, in ``acuzoo.models._builder``; its names are
re-exported here.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from ..models._builder import (
    build_zoo_model,
    check_state_dict,
    create_pretrained,
    load_zoo_pretrained,
    read_checkpoint_metadata,
    resolve_checkpoint,
)
from .manifest import replacing, sha256_file

__all__ = [
    "FORMAT",
    "build_zoo_model",
    "check_state_dict",
    "create_pretrained",
    "load_zoo_pretrained",
    "read_checkpoint_metadata",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "acuzoo.checkpoint.v1"


def save_checkpoint(model: nn.Module, path: str | os.PathLike, architecture: str, **metadata: Any) -> str:
    """Write ``model``'s state dict as safetensors with the metadata the loader checks
    (architecture, class count, input channels); returns the file's sha256. The file appears whole
    or not at all (written beside it, then renamed): a failed write leaves ``path`` as it was."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "architecture": architecture,
        "num_classes": str(getattr(model, "num_classes", "")),
        "in_chans": str(getattr(model, "in_chans", "")),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
    }
    with replacing(path) as temporary:
        save_file(state, str(temporary), metadata=meta)
    return sha256_file(path)
