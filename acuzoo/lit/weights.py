"""Start a model from tensors of a checkpoint: all matching weights (fine-tuning), or only the ACU
positions (ACU-Fixed, paper 3.2.2)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..nn import ActiveConv2d

# Where a LightningModule keeps its network; stripped so that plain state dicts match too.
_PREFIXES = ("model.", "module.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a Lightning checkpoint, a torch state dict or a safetensors file, names
    without the LightningModule's ``model.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .ckpt, .pt/.pth or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    out = {}
    for name, tensor in state.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        out[name] = tensor
    return out


@torch.no_grad()
def load_matching_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape match into ``model`` (e.g. all but a
    classifier of another size). Returns the names of the model's tensors left as they were."""
    state = read_state_dict(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"no tensor of {path} matches the model by name and shape")
    model.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


@torch.no_grad()
def load_positions(model: nn.Module, path: str | Path) -> int:
    """Copy the learned positions of every ACU layer of ``model`` from ``path``; the weights are
    untouched. Every ACU must find its positions, same name and shape. Returns the layer count."""
    state = read_state_dict(path)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, ActiveConv2d)]
    if not layers:
        raise ValueError("the model has no ACU layer to take positions for")
    for name, layer in layers:
        key = f"{name}.positions" if name else "positions"
        if key not in state:
            raise KeyError(f"{path} has no positions for ACU layer '{name}' (looked for '{key}')")
        if state[key].shape != layer.positions.shape:
            raise ValueError(
                f"positions '{key}' in {path} have shape {tuple(state[key].shape)}, "
                f"the model's layer wants {tuple(layer.positions.shape)}"
            )
        layer.positions.copy_(state[key])
    return len(layers)
