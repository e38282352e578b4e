"""``acuzoo convert`` and ``acuzoo export``: the command-line face of the hub.

Registered with the CLI (``acuzoo.cli.SUBCOMMANDS``) through ``COMMANDS``. Heavy imports happen
inside the handlers, so listing the commands costs nothing.

  acuzoo convert --from-timm mobilenetv2_140 --weights mnv2_140.safetensors --out mnv2_acu_140.safetensors
  acuzoo convert --from-torchvision mobilenet_v2 --width-mult 1.0 --weights mobilenet_v2.pth --out m.safetensors
  acuzoo convert --from-timm legacy_xception --weights xception.pth --conv --out xception_conv.safetensors
  acuzoo convert --from-ckpt logs/run/version_0/checkpoints/last.ckpt --out mine/model.safetensors --manifest
  acuzoo export cifar_resnet29_acu.fmnist --onnx acu.onnx --torchscript acu.pt
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NO_DOWNLOAD = (
    "acuzoo never downloads weights: fetch them yourself and pass --weights FILE "
    "(a state dict as .safetensors, .pth or .bin), or --random-init to try the conversion"
)


def _read_state_dict(path: str) -> dict[str, Any]:
    """A plain state dict from .safetensors or a torch file (unwrapping 'state_dict'/'model')."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _source_model(args: argparse.Namespace) -> Any:
    if args.from_timm:
        import timm

        model = timm.create_model(args.from_timm, pretrained=False)
    else:
        import torchvision

        if args.from_torchvision != "mobilenet_v2":
            raise SystemExit(f"--from-torchvision: only mobilenet_v2 is supported, got {args.from_torchvision!r}")
        model = torchvision.models.mobilenet_v2(weights=None, width_mult=args.width_mult)
    if args.weights:
        state = _read_state_dict(args.weights)
        head = [k for k in state if k.startswith(("classifier", "fc", "head"))]
        classes = state[head[0]].shape[0] if head else None
        if classes and hasattr(model, "reset_classifier"):
            model.reset_classifier(classes)
        model.load_state_dict(state, strict=True)
    elif not args.random_init:
        raise SystemExit(NO_DOWNLOAD)
    return model.eval()


def convert_main(argv: Sequence[str]) -> dict[str, Any]:
    """``acuzoo convert``: a pretrained convnet, or a Lightning checkpoint, to an acuzoo safetensors file."""
    parser = argparse.ArgumentParser(prog="acuzoo convert", description=convert_main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-timm", metavar="NAME", help="timm model: mobilenetv2_* or legacy_xception")
    source.add_argument("--from-torchvision", metavar="NAME", help="torchvision model: mobilenet_v2")
    source.add_argument("--from-ckpt", metavar="CKPT", help="a Lightning checkpoint of acuzoo's ImageClassifier")
    parser.add_argument("--width-mult", type=float, default=1.0, help="torchvision mobilenet_v2 width_mult")
    parser.add_argument("--weights", help="the source model's weights (a local file; nothing is downloaded)")
    parser.add_argument("--random-init", action="store_true", help="convert a randomly initialised source")
    parser.add_argument("--conv", action="store_true", help="the conv twin (depthwise convs) instead of ACUs")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--tag", help="pretrained tag of the entry (default: the checkpoint's, else 'custom')")
    parser.add_argument("--manifest", action="store_true", help="add the entry to manifest.json beside --out")
    args = parser.parse_args(list(argv))
    out = Path(args.out)
    if args.from_ckpt:
        from .lightning_ckpt import convert_lightning_checkpoint

        entry = convert_lightning_checkpoint(args.from_ckpt, out, args.tag, args.manifest)
    else:
        from .convert import convert_pretrained
        from .manifest import checkpoint_dir, write_entry
        from .pretrained import save_checkpoint

        model = convert_pretrained(_source_model(args), acu=not args.conv)
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or f"MobileNetV2(width={model.width})"
        sha = save_checkpoint(model, out, arch, source=args.from_timm or args.from_torchvision)
        entry = {
            "name": f"{arch}.{args.tag or 'custom'}", "file": out.name, "sha256": sha, "bytes": out.stat().st_size,
            "num_classes": model.num_classes, "in_chans": model.in_chans,
        }
        if args.manifest:
            write_entry(entry, checkpoint_dir(out.parent))
    print(json.dumps(entry, indent=2))
    arch = entry["name"].partition(".")[0]
    print(
        f"load: timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay={{'file': '{out}'}})"
        if not arch.startswith("MobileNetV2(")
        else f"load: acuzoo.models.mobilenetv2.{arch}.load_state_dict(safetensors.torch.load_file('{out}'))"
    )
    return entry


def export_main(argv: Sequence[str]) -> dict[str, Any]:
    """``acuzoo export``: fuse every ACU into an ordinary conv (Theorem 2), export ONNX and/or TorchScript."""
    parser = argparse.ArgumentParser(prog="acuzoo export", description=export_main.__doc__)
    parser.add_argument("model", help="a zoo model with its tag, e.g. cifar_resnet29_acu.fmnist")
    parser.add_argument("--weights", help="a .safetensors file (default: the registry's checkpoint of the tag)")
    parser.add_argument("--checkpoint-dir", help="the registry folder (default $ACUZOO_CHECKPOINTS, else checkpoints/)")
    parser.add_argument("--onnx", help="write the fused model as ONNX here")
    parser.add_argument("--torchscript", help="write the fused model as TorchScript here")
    parser.add_argument("--input-size", type=int, help="square input side (default: the checkpoint's)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(list(argv))
    if not (args.onnx or args.torchscript):
        parser.error("nothing to do: give --onnx and/or --torchscript")
    import torch

    from .export import export_onnx, export_torchscript, fused_copy, state_bytes
    from .pretrained import create_pretrained

    model = create_pretrained(args.model, args.weights, args.checkpoint_dir).eval()
    size = args.input_size or model.pretrained_cfg["input_size"][-1]
    chans = getattr(model, "in_chans", model.pretrained_cfg["input_size"][0])
    x = torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    report: dict[str, Any] = {
        "model": args.model,
        "unfused_bytes": state_bytes(model),
        "fused_bytes": state_bytes(fused_copy(model)),
    }
    if args.onnx:
        data = export_onnx(model, args.onnx, x, args.opset)
        report["onnx"] = {"file": args.onnx, "bytes": len(data)}
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            report["onnx"]["check"] = "onnxruntime not installed (pip install acuzoo[export])"
        else:
            (got,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
            report["onnx"]["max_abs_diff_vs_pytorch"] = float((torch.from_numpy(got) - expected).abs().max())
    if args.torchscript:
        scripted = export_torchscript(model, args.torchscript)
        with torch.no_grad():
            diff = float((scripted(x) - expected).abs().max())
        report["torchscript"] = {"file": args.torchscript, "max_abs_diff_vs_pytorch": diff}
    print(json.dumps(report, indent=2))
    return report


# name -> handler(argv after the name), merged into acuzoo.cli.SUBCOMMANDS.
COMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {"convert": convert_main, "export": export_main}
