"""Operator benchmark: ACU forward and forward+backward against a 3x3 conv and deform_conv2d.

Prints a table of medians (ms) and ratios to baselines measured in the same run:
- conv: ``nn.Conv2d`` 3x3 with the same groups, in its faster memory format (NCHW or
  channels_last, both timed; each ACU path likewise keeps its faster format);
- deform: ``torchvision.ops.deform_conv2d`` expressing the same ACU with constant offsets.

Each cell is a median over repeats; the conv and the paths are timed in interleaved rounds
(``--rounds``) and each cell keeps its best round, so that drift of this shared machine moves
baseline and ACU alike.

Shapes: MobileNetV2's depthwise layers at 224 px, batch 32, and a dense CIFAR layer
(64 -> 64, 32x32, batch 128, one shared position set). Positions at init, spread +-1.5, +-3.

    .venv/bin/python bench/ops.py [--paths auto dense columns] [--threads 2] [--allocator glibc-keep]
        [--shapes "dw C384 14" ...] [--rounds 3] [--no-deform]

``--paths native-own`` times the native kernels with the platform's conv turned off
(``acuzoo::_set_cpu_platform_conv(-1)``): what they cost without handing float32 merged
kernels to PyTorch's conv for the forward, in the same run.

glibc's malloc hands large buffers back to the OS after every call (buffers above its
32 MiB mmap-threshold ceiling always are), so page faults can dominate, and differently
for the baseline and the ACU. By default (``glibc-keep``) the script re-executes itself
with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64GiB (no mmap'd chunks, no trimming);
``jemalloc`` preloads Debian's libjemalloc2 where installed; ``glibc`` keeps the defaults.
The table's first line says which allocator the run used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


# glibc kept from handing large buffers back: no mmap'd chunks, heap never trimmed.
GLIBC_KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def _reexec_with_allocator(choice: str) -> str:
    if os.environ.get("ACUZOO_BENCH_ALLOCATOR"):
        return os.environ["ACUZOO_BENCH_ALLOCATOR"]
    if choice == "jemalloc" and JEMALLOC.exists():
        env = dict(os.environ, LD_PRELOAD=str(JEMALLOC), ACUZOO_BENCH_ALLOCATOR="jemalloc (LD_PRELOAD)")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if choice in ("glibc-keep", "jemalloc"):
        note = " (libjemalloc2 not installed)" if choice == "jemalloc" else ""
        settings = " ".join(f"{k}={v}" for k, v in GLIBC_KEEP.items())
        env = dict(os.environ, **GLIBC_KEEP, ACUZOO_BENCH_ALLOCATOR=f"glibc malloc with {settings}{note}")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return "glibc malloc (defaults)"


SHAPES = {
    # name: (C_in, C_out, H, W, stride, groups, P, batch)
    "dw C96 112 s2": (96, 96, 112, 112, 2, 96, 96, 32),
    "dw C144 56": (144, 144, 56, 56, 1, 144, 144, 32),
    "dw C192 28": (192, 192, 28, 28, 1, 192, 192, 32),
    "dw C384 14": (384, 384, 14, 14, 1, 384, 384, 32),
    "dw C960 7": (960, 960, 7, 7, 1, 960, 960, 32),
    "dense 64 32 P1": (64, 64, 32, 32, 1, 1, 1, 128),
}
SPREADS = {"init": 0.0, "+-1.5": 1.5, "+-3": 3.0}


def median_ms(fn, min_reps: int = 3, budget_s: float = 1.0) -> float:
    fn()  # warm-up: allocations, kernel selection
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 30):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=["auto"], help="operator paths to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=["jemalloc", "glibc-keep", "glibc"], default="glibc-keep")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="subset of shape names")
    parser.add_argument("--no-deform", action="store_true", help="skip the (slow) deform_conv2d baseline")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each timing keeps its best")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of repeats per timing and round")
    args = parser.parse_args()
    allocator = _reexec_with_allocator(args.allocator)

    import torch
    import torch.nn.functional as F
    from torchvision.ops import deform_conv2d

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from acuzoo.nn.active_conv import grid_positions
    from acuzoo.ops import active_conv2d, choose_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, allocator: {allocator}")
    grid = grid_positions((3, 3), (1, 1))

    def without_platform_conv(fn):
        def run():
            torch.ops.acuzoo._set_cpu_platform_conv(-1)
            try:
                return fn()
            finally:
                torch.ops.acuzoo._set_cpu_platform_conv(0)

        return run

    def fwd_bwd(op, leaves, grad):
        def run():
            for t in leaves:
                t.grad = None
            op().backward(grad)

        return run

    header = f"{'shape':<16}{'spread':>7}{'conv fwd':>10}{'conv f+b':>10}"
    for path in args.paths:
        header += f"{path + ' fwd':>16}{'x conv':>8}{path + ' f+b':>16}{'x conv':>8}"
    header += f"{'deform f+b':>12}{'deform/acu':>11}{'  auto picks':>13}"
    print(header)
    formats = (torch.contiguous_format, torch.channels_last)
    for name in args.shapes:
        c_in, c_out, h, w, s, g, p, n = SHAPES[name]
        x = torch.randn(n, c_in, h, w)
        grad = torch.randn(n, c_out, (h - 1) // s + 1, (w - 1) // s + 1)
        conv_w = torch.randn(c_out, c_in // g, 3, 3, requires_grad=True)
        deform_fb = None
        for spread_name, spread in SPREADS.items():
            pos = grid.expand(p, 9, 2).clone()
            if spread:
                pos = (torch.rand(p, 9, 2) * 2 - 1) * spread
            pos.requires_grad_()
            weight = torch.randn(c_out, c_in // g, 9, requires_grad=True)
            # Every candidate (the conv and each path, in both memory formats) as (forward,
            # forward+backward) closures; each keeps its faster format.
            candidates: dict[str, list] = {"conv": [], **{path: [] for path in args.paths}}
            for fmt in formats:
                # A fresh leaf per format: without detach, x.contiguous() is x itself for NCHW,
                # x turns into a leaf that needs grad, and every later channels_last backward
                # also runs the copy's backward into x (about +1 ms on C384 14x14, any path).
                xf = x.detach().contiguous(memory_format=fmt).requires_grad_()
                gf = grad.contiguous(memory_format=fmt)
                op = partial(F.conv2d, xf, conv_w, None, s, 1, 1, g)
                candidates["conv"].append((op, fwd_bwd(op, [xf, conv_w], gf)))
                for path in args.paths:
                    own = path == "native-own"
                    op = partial(active_conv2d, xf, weight, pos, None, s, g, path="native" if own else path)
                    closures = (op, fwd_bwd(op, [xf, weight, pos], gf))
                    candidates[path].append(tuple(map(without_platform_conv, closures)) if own else closures)
            # Rounds interleave the baseline with the paths, so that a machine slowing down
            # or speeding up mid-row moves both sides; each keeps its best round.
            best = {key: [float("inf"), float("inf")] for key in candidates}
            for _ in range(args.rounds):
                for key, closures in candidates.items():
                    for fwd, fb in closures:
                        best[key][0] = min(best[key][0], median_ms(fwd, budget_s=args.budget))
                        best[key][1] = min(best[key][1], median_ms(fb, budget_s=args.budget))
            conv_fwd, conv_fb = best["conv"]
            row = f"{name:<16}{spread_name:>7}{conv_fwd:>10.1f}{conv_fb:>10.1f}"
            for path in args.paths:
                t_fwd, t_fb = best[path]
                row += f"{t_fwd:>16.1f}{t_fwd / conv_fwd:>8.2f}{t_fb:>16.1f}{t_fb / conv_fb:>8.2f}"
            acu_fb = min(best[path][1] for path in args.paths)
            if deform_fb is None and not args.no_deform and spread_name == "+-1.5":
                xr = x.clone().requires_grad_()
                offsets = (pos.detach() - grid).reshape(1, -1, 1, 1)
                ho, wo = grad.shape[-2:]
                off = offsets.expand(n, -1, ho, wo).contiguous().requires_grad_()
                dw = weight.detach().reshape(c_out, c_in // g, 3, 3).requires_grad_()
                op = partial(deform_conv2d, xr, off, dw, None, (s, s), (1, 1))
                deform_fb = median_ms(fwd_bwd(op, [xr, off, dw], grad), min_reps=1, budget_s=0)
            ratio = f"{deform_fb / acu_fb:>11.0f}" if deform_fb is not None else f"{'-':>11}"
            deform_text = f"{deform_fb:>12.0f}" if deform_fb is not None else f"{'-':>12}"
            picks = choose_path(x, weight, pos, g)
            print(row + deform_text + ratio + f"{picks:>13}", flush=True)


if __name__ == "__main__":
    main()
