"""``acuzoo convert`` and ``acuzoo export``: the command-line face of the hub.

Registered with the CLI (``acuzoo.cli.SUBCOMMANDS``) through ``COMMANDS``. Heavy imports happen
inside the handlers, so listing the commands costs nothing. Every option is checked before
anything is written, and every file is written beside its target and renamed into place, so a
failed command leaves no partial file and no manifest entry without its file.

  acuzoo convert --from-timm mobilenetv2_140 --weights mnv2_140.safetensors --out mnv2_acu_140.safetensors
  acuzoo convert --from-timm mobilenetv2_100 --model-kwargs bn_eps=0.001 --weights tf_port.pth --out m.safetensors
  acuzoo convert --from-torchvision mobilenet_v2 --width-mult 1.0 --weights mobilenet_v2.pth --out m.safetensors
  acuzoo convert --from-timm legacy_xception --weights xception.pth --conv --out xception_conv.safetensors
  acuzoo convert --from-ckpt logs/run/version_0/checkpoints/last.ckpt --out mine/model.safetensors --manifest
  acuzoo export cifar_resnet29_acu.fmnist --onnx acu.onnx --torchscript acu.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

# What a command reports as the user's mistake (a file, a value): one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)
DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error, show the Python traceback instead of a one-line message"

NO_DOWNLOAD = (
    "acuzoo never downloads weights: fetch them yourself and pass --weights FILE "
    "(a state dict as .safetensors, .pth, .pt or .bin), or --random-init to try the conversion"
)
CONVERT_FORMATS = """\
file formats:
  --weights    the source network's state dict: a .safetensors file, or a torch file (.pth, .pt,
               .bin, .ckpt) read with torch.load(weights_only=True); a 'state_dict' or 'model'
               entry in it is used and a 'module.' prefix dropped. Without the classifier's
               tensors (a headless backbone) the result has no classifier (num_classes 0).
  --from-ckpt  a Lightning .ckpt of acuzoo's ImageClassifier.
  --out        written as .safetensors, with the metadata acuzoo's loader checks.
"""
# Keyword arguments that would load weights behind --weights' back.
_LOADING_KWARGS = ("pretrained", "pretrained_cfg_overlay", "checkpoint_path")
MAX_INPUT_SIZE = 4096


def error_message(err: BaseException) -> str:
    """The error's message on one line (a KeyError's key without its quotes)."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
    return " ".join(str(text).split()) or type(err).__name__


@contextmanager
def user_errors_reported(
    prog: str, debug: bool = False, errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> Iterator[None]:
    """Turn an expected user error raised in the block into ``<prog>: error: <message>`` on stderr
    and exit status 2; with ``debug`` it propagates with its traceback."""
    try:
        yield
    except errors as err:
        if debug:
            raise
        print(f"{prog}: error: {error_message(err)}", file=sys.stderr)
        print(f"{prog}: ({DEBUG_FLAG} shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _json_or_text(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false/null, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_model_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["bn_eps=1e-3", "pad_type=same"]`` -> ``{"bn_eps": 0.001, "pad_type": "same"}``."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-kwargs: expected KEY=VALUE (e.g. bn_eps=0.001), got {item!r}")
        if key in _LOADING_KWARGS:
            raise ValueError(f"--model-kwargs: {key} is not accepted: {NO_DOWNLOAD}")
        kwargs[key] = _json_or_text(text)
    return kwargs


def _read_state_dict(path: str) -> dict[str, Any]:
    """A plain state dict from .safetensors or a torch file (unwrapping 'state_dict'/'model')."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--weights {file}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise several types for a bad file
        kind = "safetensors file" if file.suffix == ".safetensors" else "torch file of tensors (weights_only)"
        raise ValueError(f"{file}: not a readable {kind}: {_load_failure(err)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: holds no state dict (a mapping of tensor names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_failure(err: Exception) -> str:
    """The reason in a torch.load or safetensors error, without torch's paragraph on weights_only."""
    text = error_message(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return "the weights-only unpickler refused it: " + text.split(marker, 1)[1].split(" Check the documentation")[0]
    return text


def _timm_source(name: str, kwargs: dict[str, Any]) -> Any:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"--from-timm {name}: no such timm model")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:  # an argument the model's constructor does not take
        raise ValueError(f"--model-kwargs: timm's {name} refuses them: {err}") from None


def _torchvision_source(name: str, width_mult: float | None, kwargs: dict[str, Any]) -> Any:
    import torchvision

    if name != "mobilenet_v2":
        raise ValueError(f"--from-torchvision: only mobilenet_v2 is supported, got {name!r}")
    try:
        return torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult or 1.0, **kwargs)
    except TypeError as err:
        raise ValueError(f"--model-kwargs: torchvision's {name} refuses them: {err}") from None


def _fit_classifier(model: Any, state: dict[str, Any]) -> None:
    """Size the source's classifier (its last linear layer) as the weights have it; none when the
    weights have none (a headless backbone)."""
    from torch import nn

    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return
    head = model.get_submodule(linears[-1])
    weight = state.get(f"{linears[-1]}.weight")
    classes = 0 if weight is None else int(weight.shape[0])
    if classes == head.out_features:
        return
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(classes)
    else:
        model.set_submodule(linears[-1], nn.Linear(head.in_features, classes) if classes else nn.Identity())


def _load_whole(model: Any, state: dict[str, Any], file: str, source: str) -> None:
    """Load every tensor of ``state`` into ``model``, or refuse (nothing loaded) naming what does not
    fit. Only BN's ``num_batches_tracked`` counters may be absent."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{file} does not fit {source}: {len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected "
            f"{unexpected[:3]}, {len(wrong)} of another shape {wrong[:3]} (--model-kwargs passes the source's "
            "constructor arguments, e.g. in_chans=1)"
        )
    model.load_state_dict(state, strict=False)


def _source_model(args: argparse.Namespace) -> Any:
    kwargs = parse_model_kwargs(args.model_kwargs or [])
    if args.from_timm:
        if args.width_mult is not None:
            raise ValueError("--width-mult is for --from-torchvision; timm's mobilenetv2_* names carry their width")
        model, source = _timm_source(args.from_timm, kwargs), f"timm's {args.from_timm}"
    else:
        model = _torchvision_source(args.from_torchvision, args.width_mult, kwargs)
        source = f"torchvision's {args.from_torchvision}"
    if args.weights:
        state = _read_state_dict(args.weights)
        _fit_classifier(model, state)
        _load_whole(model, state, args.weights, source)
    elif not args.random_init:
        raise ValueError(NO_DOWNLOAD)
    return model.eval()


def check_output_file(option: str, path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file this command may write (its folder is made when written): not a folder,
    under no existing file, with one of ``suffixes`` when given."""
    path = Path(path).expanduser()
    if suffixes and path.suffix not in suffixes:
        raise ValueError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file name")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    return path


def _convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acuzoo convert", description=convert_main.__doc__, epilog=CONVERT_FORMATS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-timm", metavar="NAME", help="timm model: mobilenetv2_* or legacy_xception")
    source.add_argument("--from-torchvision", metavar="NAME", help="torchvision model: mobilenet_v2")
    source.add_argument("--from-ckpt", metavar="CKPT", help="a Lightning .ckpt of acuzoo's ImageClassifier")
    parser.add_argument(
        "--model-kwargs", nargs="+", action="extend", metavar="KEY=VALUE",
        help="keyword arguments of the source model's constructor, as the weights were trained with "
        "(e.g. bn_eps=0.001 pad_type=same in_chans=1); values are read as JSON, else as text",
    )
    parser.add_argument("--width-mult", type=float, help="torchvision mobilenet_v2 width_mult (default 1.0)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="the source model's weights: .safetensors, .pth, .pt or .bin (see below)")
    weights.add_argument("--random-init", action="store_true", help="convert a randomly initialised source")
    parser.add_argument("--conv", action="store_true", help="the conv twin (depthwise convs) instead of ACUs")
    parser.add_argument("--out", required=True, help="output .safetensors file (its folder is made if needed)")
    parser.add_argument("--tag", help="pretrained tag of the entry (default: the checkpoint's, else 'custom')")
    parser.add_argument(
        "--manifest", action="store_true",
        help="add the entry to manifest.json beside --out (refused if another entry uses the file)",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return parser


def _load_hint(model: Any, arch: str, out: Path) -> str:
    if arch.startswith("MobileNetV2("):  # a width the zoo does not register
        args = f"width={model.width}, acu={model.acu}, num_classes={model.num_classes}, in_chans={model.in_chans}"
        load = f"load_state_dict(safetensors.torch.load_file('{out}'))"
        return f"load: acuzoo.models.mobilenetv2.MobileNetV2({args}).{load}"
    return f"load: timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay={{'file': '{out}'}})"


def _convert_source(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    """Convert a timm/torchvision network and write it (and its manifest entry); (entry, load hint)."""
    from .convert import convert_pretrained
    from .manifest import check_new_file, write_entry
    from .pretrained import save_checkpoint

    try:
        model = convert_pretrained(_source_model(args), acu=not args.conv)
    except TypeError as err:  # convert_pretrained's refusal of an unsupported network
        raise ValueError(str(err)) from None
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or f"MobileNetV2(width={model.width})"
    name = f"{arch}.{args.tag or 'custom'}"
    check_new_file(out.parent, name, out.name, update_manifest=args.manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_checkpoint(model, out, arch, source=args.from_timm or args.from_torchvision)
    entry = {
        "name": name, "file": out.name, "sha256": sha, "bytes": out.stat().st_size,
        "num_classes": model.num_classes, "in_chans": model.in_chans,
    }
    if args.manifest:
        write_entry(entry, out.parent)
    return entry, _load_hint(model, arch, out)


def convert_main(argv: Sequence[str]) -> dict[str, Any]:
    """``acuzoo convert``: a pretrained convnet, or a Lightning checkpoint, to an acuzoo safetensors file."""
    args = _convert_parser().parse_args(list(argv))
    out = check_output_file("--out", args.out, (".safetensors",))
    if args.from_ckpt:
        from .lightning_ckpt import convert_lightning_checkpoint

        if args.model_kwargs or args.width_mult is not None or args.weights or args.random_init:
            raise ValueError("--from-ckpt: the checkpoint holds the weights and the model's arguments; "
                             "--model-kwargs, --width-mult, --weights and --random-init do not apply")
        entry = convert_lightning_checkpoint(args.from_ckpt, out, args.tag, args.manifest)
        hint = _load_hint(None, entry["name"].partition(".")[0], out)
    else:
        entry, hint = _convert_source(args, out)
    print(json.dumps(entry, indent=2))
    print(hint)
    return entry


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acuzoo export", description=export_main.__doc__)
    parser.add_argument("model", help="a zoo model with its tag, e.g. cifar_resnet29_acu.fmnist")
    parser.add_argument("--weights", help="a .safetensors file (default: the registry's checkpoint of the tag)")
    parser.add_argument("--checkpoint-dir", help="the registry folder (default $ACUZOO_CHECKPOINTS, else checkpoints/)")
    parser.add_argument("--onnx", help="write the fused model as ONNX here")
    parser.add_argument(
        "--torchscript", help="write the fused model as TorchScript here (deprecated by torch 2.14; prefer --pt2)"
    )
    parser.add_argument("--pt2", help="write the fused model as a torch.export program (.pt2) here")
    parser.add_argument(
        "--input-size", type=int, help=f"square input side, 1 to {MAX_INPUT_SIZE} (default: the checkpoint's)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return parser


def _check_export_args(args: argparse.Namespace) -> None:
    """Every option of ``acuzoo export`` that can be checked before the model is built."""
    from .export import OPSETS, require_onnx

    if not (args.onnx or args.torchscript or args.pt2):
        raise ValueError("nothing to do: give --onnx, --torchscript and/or --pt2")
    if args.onnx:
        require_onnx()
    if args.opset not in OPSETS:
        raise ValueError(f"--opset {args.opset}: the ONNX exporter writes opsets {OPSETS[0]} to {OPSETS[-1]}")
    if args.input_size is not None and not 0 < args.input_size <= MAX_INPUT_SIZE:
        raise ValueError(f"--input-size must be in [1, {MAX_INPUT_SIZE}], got {args.input_size}")
    options = (("--onnx", args.onnx), ("--torchscript", args.torchscript), ("--pt2", args.pt2))
    outputs = [check_output_file(option, path) for option, path in options if path]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise ValueError(f"--onnx, --torchscript and --pt2 must name different files, got {[str(p) for p in outputs]}")


def _write_exports(
    onnx: tuple[str, bytes] | None, torchscript: tuple[str, Any] | None, program: tuple[str, Any] | None = None
) -> None:
    """Write the exported files together: each beside its target, renamed into place only when all are written."""
    import torch

    from .manifest import replacing

    for path, _ in filter(None, (onnx, torchscript, program)):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if onnx:
            stack.enter_context(replacing(Path(onnx[0]).expanduser())).write_bytes(onnx[1])
        if torchscript:
            torchscript[1].save(str(stack.enter_context(replacing(Path(torchscript[0]).expanduser()))))
        if program:
            torch.export.save(program[1], str(stack.enter_context(replacing(Path(program[0]).expanduser()))))


def export_main(argv: Sequence[str]) -> dict[str, Any]:
    """``acuzoo export``: fuse every ACU into an ordinary conv (Theorem 2), export ONNX, TorchScript and/or
    a torch.export program (.pt2), each checked against the PyTorch model."""
    args = _export_parser().parse_args(list(argv))
    _check_export_args(args)
    import torch

    from .export import export_onnx, export_program, export_torchscript, fused_copy, state_bytes
    from .pretrained import create_pretrained

    model = create_pretrained(args.model, args.weights, args.checkpoint_dir).eval()
    size = args.input_size or model.pretrained_cfg["input_size"][-1]
    chans = getattr(model, "in_chans", model.pretrained_cfg["input_size"][0])
    x = torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = model(x)
    except RuntimeError as err:  # e.g. an input too small for the network's strides
        raise ValueError(f"--input-size {size}: {args.model} cannot run on it: {error_message(err)}") from None
    report: dict[str, Any] = {
        "model": args.model,
        "unfused_bytes": state_bytes(model),
        "fused_bytes": state_bytes(fused_copy(model)),
    }
    onnx = scripted = None
    if args.onnx:
        data = export_onnx(model, None, x, args.opset)
        onnx = (args.onnx, data)
        report["onnx"] = {"file": args.onnx, "bytes": len(data)}
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            report["onnx"]["check"] = "onnxruntime not installed (pip install acuzoo[export])"
        else:
            (got,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
            report["onnx"]["max_abs_diff_vs_pytorch"] = float((torch.from_numpy(got) - expected).abs().max())
    if args.torchscript:
        scripted = export_torchscript(model, None)
        with torch.no_grad():
            diff = float((scripted(x) - expected).abs().max())
        report["torchscript"] = {"file": args.torchscript, "max_abs_diff_vs_pytorch": diff}
    program = None
    if args.pt2:
        program = export_program(model, None, x)
        with torch.no_grad():
            diffs = [float((program.module()(x[:b]) - expected[:b]).abs().max()) for b in (1, len(x))]
        report["pt2"] = {"file": args.pt2, "max_abs_diff_vs_pytorch": max(diffs), "dynamic_batch": True}
    _write_exports(
        onnx,
        (args.torchscript, scripted) if scripted is not None else None,
        (args.pt2, program) if program is not None else None,
    )
    print(json.dumps(report, indent=2))
    return report


# name -> handler(argv after the name), merged into acuzoo.cli.SUBCOMMANDS.
COMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {"convert": convert_main, "export": export_main}
