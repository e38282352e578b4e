"""Deployment export: every ACU fused into the ordinary conv it equals (Theorem 2), then ONNX or
TorchScript. The exported graph holds only standard ops, so any runtime runs it."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ..nn import ActiveConv2d, fuse_acu
from .manifest import replacing

__all__ = ["OPSETS", "export_onnx", "export_program", "export_torchscript", "fused_copy", "require_onnx", "state_bytes"]

EXPORT_EXTRA = "pip install 'acuzoo[export]'"

# The opsets torch's TorchScript-based ONNX exporter (the one used here) writes.
OPSETS = tuple(range(
    getattr(torch.onnx._constants, "ONNX_MIN_OPSET", 7),
    getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20) + 1,
))


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
    """Fuse and export to ONNX (batch dimension dynamic); writes ``path`` when given (whole, or
    not at all) and returns the serialized model. A ValueError names an opset outside ``OPSETS``
    or one too old for an operator of the model."""
    if opset not in OPSETS:
        raise ValueError(f"opset {opset}: the ONNX exporter writes opsets {OPSETS[0]} to {OPSETS[-1]}")
    require_onnx()
    fused = fused_copy(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _opset_errors(opset):
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
        with replacing(path) as temporary:
            temporary.write_bytes(data)
    return data


def require_onnx() -> None:
    """ONNX export needs the ``onnx`` package, which the ``export`` extra installs."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError(f"ONNX export needs the onnx package (the export extra): {EXPORT_EXTRA}") from None


def export_program(
    model: nn.Module, path: str | os.PathLike | None, example: torch.Tensor
) -> torch.export.ExportedProgram:
    """Fuse and capture with ``torch.export`` (batch dimension dynamic); writes ``path`` (a ``.pt2``)
    when given, whole or not at all, and returns the program."""
    fused = fused_copy(model)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(fused, (example,), dynamic_shapes=({0: batch},))
    if path is not None:
        with replacing(path) as temporary:
            torch.export.save(program, str(temporary))
    return program


@contextlib.contextmanager
def _opset_errors(opset: int) -> Iterator[None]:
    """The exporter's refusal of an operator at this opset, as a ValueError naming the opset."""
    try:
        yield
    except torch.onnx.errors.OnnxExporterError as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"opset {opset}: {first_line}") from None


def export_torchscript(model: nn.Module, path: str | os.PathLike | None) -> torch.jit.ScriptModule:
    """Fuse and compile with ``torch.jit.script``; writes ``path`` when given (whole, or not at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fused_copy(model))
    if path is not None:
        with replacing(path) as temporary:
            scripted.save(str(temporary))
    return scripted
