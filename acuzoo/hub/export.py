"""Deployment export: every ACU fused into the ordinary conv it equals (Theorem 2), then ONNX or
TorchScript. The exported graph holds only standard ops, so any runtime runs it."""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..nn import ActiveConv2d, fuse_acu

__all__ = ["export_onnx", "export_torchscript", "fused_copy", "state_bytes"]


def fused_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ACU replaced by its exact conv; ``model`` is untouched."""
    fused = fuse_acu(copy.deepcopy(model)).eval()
    left = [name for name, m in fused.named_modules() if isinstance(m, ActiveConv2d)]
    if left:
        raise RuntimeError(f"ACU layers left after fusing: {left[:5]}")
    return fused


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (what a weights file holds)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(
    model: nn.Module, path: str | os.PathLike | None, example: torch.Tensor, opset: int = 17
) -> bytes:
    """Fuse and export to ONNX (batch dimension dynamic); writes ``path`` when given and
    returns the serialized model."""
    fused = fused_copy(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        torch.onnx.export(
            fused,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def export_torchscript(model: nn.Module, path: str | os.PathLike | None) -> torch.jit.ScriptModule:
    """Fuse and compile with ``torch.jit.script``; writes ``path`` when given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fused_copy(model))
    if path is not None:
        scripted.save(str(path))
    return scripted
