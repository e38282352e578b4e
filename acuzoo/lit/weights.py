"""Start a model from tensors of a checkpoint: all matching weights (fine-tuning), or only the ACU
positions (ACU-Fixed, paper 3.2.2)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..nn import ActiveConv2d

_logger = logging.getLogger(__name__)

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


@dataclass
class WeightLoad:
    """What ``load_matching_weights`` does with a file, tensor by tensor.

    ``loaded``: the model's tensors copied from the file. ``from_conv``: ACU weights read from
    the file's conv kernel (Lemma 1) and the positions of those ACUs, which stay on the grid.
    ``new_head``: classifier tensors the file has in another size, or lacks (and the file's
    classifier tensors the model lacks), left as initialised on purpose. The rest is what a strict
    load refuses: ``missing`` (the model's tensors the file lacks), ``unexpected`` (the file's
    tensors the model lacks) and ``mismatched`` (name -> why it cannot be loaded).
    """

    loaded: list[str] = field(default_factory=list)
    from_conv: list[str] = field(default_factory=list)
    new_head: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every tensor, of the model and of the file, found its match (a new head aside)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def not_loaded(self) -> list[str]:
        """One line per tensor a strict load refuses, with why."""
        return (
            [f"{name}: not in the file" for name in self.missing]
            + [f"{name}: in the file, not in the model" for name in self.unexpected]
            + [f"{name}: {why}" for name, why in self.mismatched.items()]
        )

    def summary(self) -> str:
        text = f"{len(self.loaded) + len(self.from_conv)} tensors loaded"
        if self.from_conv:
            acus = sum(name.endswith(".positions") or name == "positions" for name in self.from_conv)
            text += f" ({len(self.from_conv) - acus} ACU weights from conv kernels, {acus} ACUs kept on the grid)"
        if self.new_head:
            text += f"; the classifier stays new ({', '.join(self.new_head)})"
        if not self.complete:
            text += f"; {len(self.not_loaded())} left as initialised: " + "; ".join(self.not_loaded())
        return text


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of a timm model's classifier (``get_classifier()``), the part fine-tuning to
    another class count replaces; empty for a model without that method."""
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return []
    heads = get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    ids = {id(head) for head in heads if isinstance(head, nn.Module)}
    return [name for name, module in model.named_modules() if name and id(module) in ids]


def _tensor_name(module_name: str, attribute: str) -> str:
    return f"{module_name}.{attribute}" if module_name else attribute


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _conv_kernel_for_acu(
    layer: ActiveConv2d, kernel: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor | None, str]:
    """The ACU weight equal to a conv ``kernel`` (O, I, kh, kw) when the layer's ``positions`` (as
    they will be after loading) are its kh x kw grid; else None and why not."""
    conv_shape = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
    if _shape(kernel) != conv_shape:
        return None, (
            f"the file's {_shape(kernel)}, the model's ACU takes {_shape(layer.weight)} or a conv kernel {conv_shape}"
        )
    if _shape(positions) != _shape(layer.positions) or not torch.equal(
        positions.to(layer.positions), layer.initial_positions()
    ):
        return None, (
            "the file holds a conv kernel, but the ACU's positions are not on its "
            f"{layer.kernel_size[0]} x {layer.kernel_size[1]} grid, so the kernel does not describe it"
        )
    # Row-major synapses, as grid_positions and ActiveConv2d.from_conv2d order them.
    return kernel.reshape(layer.weight.shape), ""


def _match_acu_weights(
    model: nn.Module, state: dict[str, torch.Tensor], plan: WeightLoad, take: dict[str, torch.Tensor]
) -> set[str]:
    """Conv kernels of the file for the model's ACUs (Lemma 1); returns the names it settled."""
    settled = set()
    for module_name, layer in model.named_modules():
        if not isinstance(layer, ActiveConv2d):
            continue
        weight_key, positions_key = _tensor_name(module_name, "weight"), _tensor_name(module_name, "positions")
        kernel = state.get(weight_key)
        if kernel is None or kernel.dim() != 4:
            continue
        positions = state.get(positions_key, layer.positions.detach())
        weight, why = _conv_kernel_for_acu(layer, kernel, positions)
        settled.add(weight_key)
        if weight is None:
            plan.mismatched[weight_key] = why
            continue
        take[weight_key] = weight
        plan.from_conv.append(weight_key)
        if positions_key not in state:
            plan.from_conv.append(positions_key)
            settled.add(positions_key)
    return settled


def match_weights(
    model: nn.Module, state: dict[str, torch.Tensor], head: Iterable[str] = ()
) -> tuple[WeightLoad, dict[str, torch.Tensor]]:
    """Which of ``state``'s tensors ``model`` takes, by name and shape, conv kernels into ACUs on
    their grid included: (the plan, the tensors to load). Tensors under the module names in ``head``
    that do not match go to ``new_head`` instead of the refused lists."""
    head = tuple(head)

    def in_head(name: str) -> bool:
        return any(name.startswith(prefix + ".") for prefix in head)

    plan, take = WeightLoad(), {}
    own = model.state_dict()
    settled = _match_acu_weights(model, state, plan, take)
    for name, tensor in own.items():
        if name in settled:
            continue
        theirs = state.get(name)
        if theirs is not None and theirs.shape == tensor.shape:
            take[name] = theirs
            plan.loaded.append(name)
        elif in_head(name):
            plan.new_head.append(name)
        elif theirs is None:
            plan.missing.append(name)
        else:
            plan.mismatched[name] = f"the file's {_shape(theirs)}, the model's {_shape(tensor)}"
    for name in state:
        if name not in own:
            (plan.new_head if in_head(name) else plan.unexpected).append(name)
    return plan, take


@torch.no_grad()
def load_matching_weights(
    model: nn.Module, path: str | Path, strict: bool = True, head: Iterable[str] = ()
) -> WeightLoad:
    """Copy the tensors of ``path`` into ``model`` by name and shape; a conv kernel (O, I, k, k)
    goes into an ACU whose positions are its k x k grid (Lemma 1: the same layer).

    Strict (the default): every tensor of the model and of the file must find its match, or
    nothing is loaded and a ValueError lists each one left with why. Only the modules named in
    ``head`` (the classifier, when fine-tuning to another class count) may stay as initialised.
    ``strict=False`` loads what matches and logs the rest as a warning. Returns what was done.
    """
    plan, take = match_weights(model, read_state_dict(path), head)
    if not take:
        raise ValueError(f"no tensor of {path} matches the model by name and shape")
    if strict and not plan.complete:
        lines = "\n  ".join(plan.not_loaded())
        raise ValueError(
            f"{path}: refusing a partial load, {len(plan.not_loaded())} tensor(s) would not be loaded "
            f"(strict=False, or init_weights_strict: false in ImageClassifier, loads what matches):\n  {lines}"
        )
    model.load_state_dict(take, strict=False)
    (_logger.info if plan.complete else _logger.warning)(f"weights from {path}: {plan.summary()}")
    return plan


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
