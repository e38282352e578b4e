"""A Lightning ``.ckpt`` of ``ImageClassifier`` -> a timm-loadable safetensors checkpoint.

Reads the file as plain tensors and hyper-parameters (``weights_only``: no code from the file
runs, and Lightning need not be imported), rebuilds the network with timm from the saved
``model_name``/``num_classes``/``in_chans``/``model_kwargs``, loads the weights strictly (which
proves the result loads into ``timm.create_model``), and saves it with the metadata the
registry checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..nn import convert_to_acu
from .manifest import check_new_file, write_entry
from .manifest import checkpoint_dir as registry_dir
from .pretrained import save_checkpoint

__all__ = ["convert_lightning_checkpoint", "model_from_lightning_checkpoint"]

# ImageClassifier keeps its network as ``self.model``.
PREFIX = "model."
# model_kwargs that steer loading, not the architecture.
_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_dir", "checkpoint_path")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"Lightning checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable Lightning checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint of ImageClassifier (no state_dict / hyper_parameters)")
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    hparams = dict(ckpt["hyper_parameters"])
    if not state or "model_name" not in hparams:
        raise ValueError(f"{path}: no 'model.' weights or no model_name hyper-parameter (not an ImageClassifier?)")
    return state, {**hparams, "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}


def model_from_lightning_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of an ``ImageClassifier`` checkpoint (eval mode) and its hyper-parameters."""
    state, hparams = _read(Path(path))
    kwargs = {k: v for k, v in (hparams.get("model_kwargs") or {}).items() if k not in _LOADING_KWARGS}
    model = timm.create_model(
        hparams["model_name"], num_classes=hparams.get("num_classes", 1000), in_chans=hparams.get("in_chans", 3),
        **kwargs,
    )
    if hparams.get("convert_to_acu"):
        model = convert_to_acu(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {hparams['model_name']}: {err}") from None
    return model.eval(), hparams


def convert_lightning_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, tag: str | None = None, manifest: bool = False
) -> dict[str, Any]:
    """Write the network of a Lightning checkpoint to ``out`` (.safetensors); returns its
    manifest-style entry (also added to ``<out folder>/manifest.json`` when ``manifest``).

    The entry's name is ``<model>.<tag>``: ``tag`` or the tag of the checkpoint's model name.
    Nothing is written when ``out`` would break a manifest beside it (see ``check_new_file``); the
    file is written whole, then the manifest.
    """
    model, hparams = model_from_lightning_checkpoint(path)
    arch, _, saved_tag = hparams["model_name"].partition(".")
    tag = tag or saved_tag or "custom"
    out = Path(out)
    check_new_file(registry_dir(out.parent), f"{arch}.{tag}", out.name, update_manifest=manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    input_size = hparams.get("input_size") or timm.data.resolve_model_data_config(model)["input_size"][-1]
    sha = save_checkpoint(
        model, out, arch, source=Path(path).name, input_size=input_size,
        global_step=hparams.get("global_step"), convert_to_acu=bool(hparams.get("convert_to_acu")),
    )
    entry = {
        "name": f"{arch}.{tag}",
        "file": out.name,
        "sha256": sha,
        "bytes": out.stat().st_size,
        "num_classes": hparams.get("num_classes"),
        "in_chans": hparams.get("in_chans"),
        "input_size": [hparams.get("in_chans"), input_size, input_size],
        "source": str(path),
    }
    if manifest:
        write_entry(entry, registry_dir(out.parent))
    return entry
