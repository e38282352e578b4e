"""The native depthwise CPU kernels side by side, in the same run: channel blocks reading
channels-last input in place, channel blocks through zero-bordered band copies, and padded
planes (forced with the test hooks ``acuzoo::_set_cpu_depthwise_blocks``,
``acuzoo::_set_cpu_blocks_direct`` and ``acuzoo::_set_cpu_platform_conv``), and what the
dispatcher picks (``auto``), against PyTorch's depthwise 3x3 conv, in NCHW and
channels_last. Medians in ms; not a test.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \\
        .venv/bin/python bench/depthwise_kernels.py [--shapes 960x7 384x14] [--spread 0]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from acuzoo.nn.active_conv import grid_positions  # noqa: E402
from acuzoo.ops import native  # noqa: E402
from bench.ops import median_ms  # noqa: E402

# kernel: (blocks mode, in-place mode, platform conv mode) for the three test hooks; "auto"
# is what the dispatcher does (the blocks hand float32 kernels up to 7x7 to the platform's
# conv for the forward)
MODES = {"in-place": (1, 1, -1), "bands": (1, -1, -1), "planes": (-1, 0, 0), "auto": (0, 0, 0)}


def set_modes(blocks: int, in_place: int, platform: int) -> None:
    torch.ops.acuzoo._set_cpu_depthwise_blocks(blocks)
    torch.ops.acuzoo._set_cpu_blocks_direct(in_place)
    torch.ops.acuzoo._set_cpu_platform_conv(platform)


def conv_fwd_bwd(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> None:
    """PyTorch's depthwise 3x3 conv, forward and backward to input and weight."""
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    F.conv2d(xg, wg, None, 1, 1, 1, x.shape[1]).backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["960x7", "384x14", "192x28"], help="CxH, batch 32")
    parser.add_argument(
        "--spread", type=float, default=0.0, help="positions: the grid (0) or uniform(-s, s) around the origin"
    )
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if native.load() is None:
        raise SystemExit("the native extension is not available on this machine")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, 2 threads, float32, batch {args.batch}, spread {args.spread}")
    print(f"{'shape':<8}{'format':<8}{'kernel':<10}{'fwd':>8}{'bwd':>8}{'f+b':>8}{'x conv f+b':>12}")
    op, backward = torch.ops.acuzoo.active_conv2d, torch.ops.acuzoo.active_conv2d_backward
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
            conv = median_ms(partial(conv_fwd_bwd, xf, torch.randn(c, 1, 3, 3), go))
            forward = partial(op, xf, w, pos, None, [1, 1], c)
            gradients = partial(backward, go, xf, w, pos, [1, 1], c, [True, True, True])
            for kernel, modes in MODES.items():
                set_modes(*modes)
                try:
                    fwd, bwd = median_ms(forward), median_ms(gradients)
                finally:
                    set_modes(0, 0, 0)
                total = fwd + bwd
                print(f"{shape:<8}{name:<8}{kernel:<10}{fwd:>8.2f}{bwd:>8.2f}{total:>8.2f}{total / conv:>12.2f}")

if __name__ == "__main__":
    main()
