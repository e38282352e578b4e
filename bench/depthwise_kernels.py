"""The native depthwise CPU kernels side by side, in the same run, against PyTorch's depthwise
3x3 conv, in NCHW and channels_last. Medians in ms; not a test.

Kernels by name (``acuzoo.ops.KERNELS``): ``cpu.depthwise_blocks`` (channel blocks reading
channels-last input in place), ``cpu.depthwise_bands`` (channel blocks through zero-bordered
band copies), ``cpu.depthwise_planes`` (padded planes), ``cpu.merged_conv`` (the platform's
conv runs the merged kernel's forward; its backward is the plan's), and ``auto`` (what the
kernel plan picks). Each is timed through the raw ops (``torch.ops.acuzoo.active_conv2d`` and
``active_conv2d_backward`` with every gradient), with the forward and backward kernels that
``acuzoo.ops.explain`` reports for it; a kernel that cannot serve a shape prints ``-``.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \\
        .venv/bin/python bench/depthwise_kernels.py [--shapes 960x7 384x14] [--spread 0] [--kernels ...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from ops import median_ms  # bench/ops.py: this script's folder is first on sys.path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH
from acuzoo.nn.active_conv import grid_positions  # noqa: E402
from acuzoo.ops import KERNELS, explain, force, native  # noqa: E402

DEPTHWISE_KERNELS = ["cpu.depthwise_blocks", "cpu.depthwise_bands", "cpu.depthwise_planes", "cpu.merged_conv", "auto"]


def conv_fwd_bwd(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> None:
    """PyTorch's depthwise 3x3 conv, forward and backward to input and weight."""
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    F.conv2d(xg, wg, None, 1, 1, 1, x.shape[1]).backward(grad)


def planned_pair(kernel: str, call_args: tuple, x: torch.Tensor) -> tuple[str, str] | None:
    """(forward, backward) kernel names that run ``kernel`` on this call; None if it cannot."""
    context = contextlib.nullcontext() if kernel == "auto" else force(kernel)
    try:
        with context:
            plan = explain(call_args, x)
    except ValueError:
        return None
    if not all(KERNELS[name].native for name in (plan.forward, plan.backward)):
        return None  # a PyTorch kernel: no raw op to time
    return plan.forward, plan.backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["960x7", "384x14", "192x28"], help="CxH, batch 32")
    parser.add_argument(
        "--spread", type=float, default=0.0, help="positions: the grid (0) or uniform(-s, s) around the origin"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--kernels", nargs="+", default=DEPTHWISE_KERNELS, choices=[*KERNELS, "auto"])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per timing")
    args = parser.parse_args()
    if native.load() is None:
        raise SystemExit("the native extension is not available on this machine")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, 2 threads, float32, batch {args.batch}, spread {args.spread}")
    print(f"{'shape':<8}{'format':<8}{'kernel':<22}{'runs (forward / backward)':<48}{'fwd':>8}{'bwd':>8}", end="")
    print(f"{'f+b':>8}{'x conv f+b':>12}")
    op, backward = torch.ops.acuzoo.active_conv2d, torch.ops.acuzoo.active_conv2d_backward
    timed = partial(median_ms, budget_s=args.budget)
    for shape in args.shapes:
        c, h = (int(v) for v in shape.split("x"))
        x = torch.randn(args.batch, c, h, h)
        w = torch.randn(c, 1, 9)
        pos = grid_positions((3, 3), (1, 1)).expand(c, 9, 2).contiguous()
        if args.spread:
            pos = (torch.rand(c, 9, 2) * 2 - 1) * args.spread
        for fmt, name in ((torch.contiguous_format, "nchw"), (torch.channels_last, "cl")):
            xf = x.contiguous(memory_format=fmt)
            go = torch.randn_like(xf)
            conv = timed(partial(conv_fwd_bwd, xf, torch.randn(c, 1, 3, 3), go))
            for kernel in args.kernels:
                pair = planned_pair(kernel, (w, pos, None, 1, c), xf)
                label = f"{shape:<8}{name:<8}{kernel.removeprefix('cpu.'):<22}"
                if pair is None:
                    print(f"{label}{'-':<48}{'-':>8}{'-':>8}{'-':>8}{'-':>12}")
                    continue
                forward = partial(op, xf, w, pos, None, [1, 1], c, *pair)
                gradients = partial(backward, go, xf, w, pos, [1, 1], c, [True, True, True], pair[1])
                fwd, bwd = timed(forward), timed(gradients)
                total = fwd + bwd
                runs = " / ".join(pair)
                print(f"{label}{runs:<48}{fwd:>8.2f}{bwd:>8.2f}{total:>8.2f}{total / conv:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
