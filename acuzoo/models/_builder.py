"""Build a zoo model with its pretrained file: find, verify, then load, through timm's loader.

``build_zoo_model`` is what the model files' builders call instead of timm's
``build_model_with_cfg``. With ``pretrained=True`` it looks ``<model>.<tag>`` up in the
checkpoint registry (``_manifest.py``), refuses a file whose sha256, architecture or tensor names
and shapes are wrong, and only then lets timm load it, so timm's own handling of a new class count
(the classifier is reset), of other input channels and of ``features_only`` applies. Nothing is
ever downloaded. Writing checkpoints (publishing) is ``acuzoo.hub``'s job.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, load_pretrained, resolve_pretrained_cfg
from torch import nn

from ._manifest import MANIFEST_NAME, CheckpointError, find_entry, read_manifest, sha256_file

__all__ = [
    "build_zoo_model",
    "check_state_dict",
    "create_pretrained",
    "load_zoo_pretrained",
    "read_checkpoint_metadata",
    "resolve_checkpoint",
]

_logger = logging.getLogger(__name__)


def read_checkpoint_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, tensor shapes) of a safetensors file, reading only its header; a CheckpointError
    naming the file when it is not a complete safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupted?): {err}") from None
    return metadata, shapes


def _verify_file(path: Path, architecture: str, sha256: str | None) -> dict[str, str]:
    """Every check that needs no model: hash, architecture. Returns the metadata."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise CheckpointError(
                f"{path}: sha256 {actual} does not match the manifest's {sha256} (the file was changed, "
                "truncated or replaced); refusing to load it"
            )
    metadata, _ = read_checkpoint_metadata(path)
    held = metadata.get("architecture")
    if held and held != architecture:
        raise CheckpointError(f"{path} holds weights of '{held}', not of '{architecture}'; refusing to load it")
    return metadata


def _manifest_sha(path: Path) -> str | None:
    """The sha256 a manifest beside ``path`` records for it, if any."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    for entry in read_manifest(path.parent).values():
        if (path.parent / entry.file).resolve() == path.resolve():
            return entry.sha256
    return None


def resolve_checkpoint(
    architecture: str, tag: str, file: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> tuple[Path, dict[str, str]]:
    """The verified file of ``<architecture>.<tag>`` and its metadata: ``file`` when given (checked
    against a manifest beside it, if one lists it), else the registry's entry."""
    if file is not None:
        path = Path(file).expanduser()
        sha = _manifest_sha(path) if path.is_file() else None
    else:
        entry, path = find_entry(f"{architecture}.{tag}", checkpoint_dir)
        sha = entry.sha256
    return path, _verify_file(path, architecture, sha)


def _cfg_for_file(cfg: dict[str, Any], path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The pretrained cfg pointed at the verified file, with what the file says it holds."""
    cfg = {**cfg, "file": str(path), "url": "", "hf_hub_id": None, "source": "", "state_dict": None}
    if metadata.get("num_classes", "").isdigit():
        cfg["num_classes"] = int(metadata["num_classes"])
    if metadata.get("in_chans", "").isdigit() and cfg.get("input_size"):
        cfg["input_size"] = (int(metadata["in_chans"]), *cfg["input_size"][1:])
    return cfg


def _names(cfg: dict[str, Any], key: str) -> tuple[str, ...]:
    value = cfg.get(key) or ()
    return (value,) if isinstance(value, str) else tuple(value)


def check_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, path: Path, cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """timm filter_fn: refuse (before anything is copied) a checkpoint whose tensors are not the
    model's, by name and shape. Allowed differences: the classifier when the class counts differ
    (timm resets it) and the first conv when the input channels differ (timm adapts it)."""
    classifier = {f"{c}.{p}" for c in _names(cfg, "classifier") for p in ("weight", "bias")}
    first_conv = {f"{c}.weight" for c in _names(cfg, "first_conv")}
    model_classes = getattr(model, "num_classes", cfg.get("num_classes"))
    new_head = model_classes != cfg.get("num_classes")
    model_chans = getattr(model, "in_chans", None)
    new_stem = model_chans is not None and model_chans != (cfg.get("input_size") or (3,))[0]
    own = model.state_dict()
    skip = classifier if new_head else set()
    missing = sorted(set(own) - set(state) - skip)
    unexpected = sorted(set(state) - set(own) - skip)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__} '{cfg.get('architecture')}': "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}; "
            "nothing was loaded"
        )
    allowed = skip | (first_conv if new_stem else set())
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own) - allowed)
        if state[k].shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path}: tensors of the wrong shape for this model: {wrong[:5]}; nothing was loaded")
    if new_head:
        _logger.warning(
            "%s: the checkpoint's classifier has %s classes, the model %s: the classifier (%s) is reset "
            "(freshly initialised); every other tensor is loaded",
            path.name,
            cfg.get("num_classes"),
            model_classes,
            ", ".join(_names(cfg, "classifier")),
        )
    return state


def load_zoo_pretrained(
    model: nn.Module,
    file: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Load the checkpoint of ``model.pretrained_cfg`` (its architecture and tag) into a built
    model, or ``file``; with the same checks and classifier handling as ``pretrained=True``."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not cfg.get("architecture"):
        raise ValueError("the model has no pretrained_cfg with an architecture; build it with timm.create_model")
    path, metadata = resolve_checkpoint(cfg["architecture"], cfg.get("tag") or "", file, checkpoint_dir)
    cfg = _cfg_for_file(cfg, path, metadata)
    load_pretrained(
        model,
        pretrained_cfg=cfg,
        num_classes=getattr(model, "num_classes", cfg.get("num_classes")),
        in_chans=getattr(model, "in_chans", (cfg.get("input_size") or (3,))[0]),
        filter_fn=partial(check_state_dict, path=path, cfg=cfg),
    )
    return model


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` whose pretrained weights come from acuzoo's registry.

    Args:
        model_cls, variant, kwargs: as ``build_model_with_cfg`` (``pretrained_cfg`` is the tag).
        pretrained: load ``<variant>.<tag>``'s checkpoint (verified first; never downloaded).
        checkpoint_dir: the registry folder; default ``$ACUZOO_CHECKPOINTS``, else ``checkpoints/``.
            ``pretrained_cfg_overlay={"file": path}`` loads one file directly instead.
    """
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, False, **kwargs)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg")).to_dict()
    path, metadata = resolve_checkpoint(variant, cfg.get("tag") or "", overlay.pop("file", None), checkpoint_dir)
    cfg = _cfg_for_file({**cfg, **overlay}, path, metadata)
    return build_model_with_cfg(
        model_cls,
        variant,
        True,
        pretrained_cfg_overlay={k: cfg[k] for k in ("file", "url", "hf_hub_id", "source", "num_classes", "input_size")}
        | overlay,
        pretrained_filter_fn=partial(check_state_dict, path=path, cfg=cfg),
        **kwargs,
    )


def create_pretrained(
    name: str,
    file: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name)`` with the checkpoint of ``name`` (``<model>.<tag>``, looked up in the
    registry) or ``file`` loaded, sized as the checkpoint says (class count, input channels) unless
    ``kwargs`` say otherwise. Unlike ``timm.create_model``, any tag the registry lists works."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise ValueError(f"unknown model '{arch}'")
    tag = tag or resolve_pretrained_cfg(arch).tag or ""
    path, metadata = resolve_checkpoint(arch, tag, file, checkpoint_dir)
    for key in ("num_classes", "in_chans"):
        if metadata.get(key, "").isdigit():
            kwargs.setdefault(key, int(metadata[key]))
    # A tag timm does not know (a user's own checkpoint) builds the default config.
    registered = f"{arch}.{tag}" in timm.list_models(arch, include_tags=True)
    model = timm.create_model(f"{arch}.{tag}" if registered else arch, pretrained=False, **kwargs)
    return load_zoo_pretrained(model, path)
