"""CPU timing of the native ACU kernels against PyTorch's 3x3 convolution (not a test).

    .venv/bin/python bench/native_cpu.py [--reps 7] [--quick]

Forward+backward medians, 2 threads, float32, after warm-up; the baseline (``F.conv2d``
3x3, same groups, in its fastest memory format: NCHW and channels_last are both timed)
is measured in the same run. Shapes: MobileNetV2's depthwise layers at 224 px, B = 32,
and a dense CIFAR layer (64 -> 64, 32x32, B = 128, P = 1); positions at init, spread
+-1.5 and +-3. The PyTorch path of the operator (``active_conv2d(path="auto")``) is
timed too, for context.

Allocator: glibc hands large buffers back to the OS on free and page-faults them in
again on the next allocation, which can dominate these timings. Unless
``--keep-allocator`` is given, the script re-executes itself with
``MALLOC_MMAP_MAX_=0`` (no mmap'd chunks: large buffers come from the heap) and
``MALLOC_TRIM_THRESHOLD_=68719476736`` (the heap is never trimmed), and prints the
settings it ran with. (``MALLOC_MMAP_THRESHOLD_`` alone is capped at 32 MiB by glibc,
below these layers' buffers.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}

# name, batch, c_in, c_out, size, stride, groups, position sets
SHAPES = [
    ("dw C96 112 s2", 32, 96, 96, 112, 2, 96, 96),
    ("dw C144 56", 32, 144, 144, 56, 1, 144, 144),
    ("dw C192 28", 32, 192, 192, 28, 1, 192, 192),
    ("dw C384 14", 32, 384, 384, 14, 1, 384, 384),
    ("dw C960 7", 32, 960, 960, 7, 1, 960, 960),
    ("dense 64 32 P1", 128, 64, 64, 32, 1, 1, 1),
]
SPREADS = [("init", 0.0), ("+-1.5", 1.5), ("+-3", 3.0)]


def _reexec_with_allocator_settings() -> None:
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return
    env = {**os.environ, **ALLOCATOR_ENV}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch / 8: a smoke run")
    parser.add_argument("--keep-allocator", action="store_true", help="do not set MALLOC_* variables")
    parser.add_argument("--no-auto", action="store_true", help="skip the PyTorch path of the operator")
    parser.add_argument("--only", default="", help="time only the layers whose name contains this")
    args = parser.parse_args()
    if not args.keep_allocator:
        _reexec_with_allocator_settings()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import torch.nn.functional as F

    from acuzoo.nn.active_conv import grid_positions
    from acuzoo.ops import active_conv2d, native

    torch.set_num_threads(args.threads)
    if native.load() is None:
        raise SystemExit(f"native extension unavailable: {native._failed}")

    def fwd_bwd(fn, args, leaves, grad):
        def run():
            for t in leaves:
                t.grad = None
            fn(*args).backward(grad)

        return run

    def auto_path(*a):
        return active_conv2d(*a, path="auto")

    def median_ms(run) -> float:
        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    settings = {k: os.environ.get(k) for k in ALLOCATOR_ENV}
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, reps {args.reps} "
        f"(median), warm-up {args.warmup}; allocator {settings}"
    )
    header = (
        f"{'layer':16} {'spread':6} {'conv ms':>8} {'fmt':4} {'native ms':>9} {'ratio':>6} "
        f"{'nat CL-in':>9} {'auto ms':>8} {'auto/conv':>9}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for name, batch, c_in, c_out, size, stride, groups, sets in SHAPES:
        if args.only not in name:
            continue
        if args.quick:
            batch = max(1, batch // 8)
        x = torch.randn(batch, c_in, size, size, generator=gen)
        weight3 = torch.randn(c_out, c_in // groups, 3, 3, generator=gen) * 0.1
        out_size = (size - 1) // stride + 1
        grad = torch.randn(batch, c_out, out_size, out_size, generator=gen)
        conv_ms = {}
        for fmt, mf in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
            xf = x.contiguous(memory_format=mf).requires_grad_()
            wf = weight3.contiguous(memory_format=mf).requires_grad_()
            gf = grad.contiguous(memory_format=mf)
            run = fwd_bwd(F.conv2d, (xf, wf, None, stride, 1, 1, groups), [xf, wf], gf)
            conv_ms[fmt] = median_ms(run)
        best_fmt = min(conv_ms, key=conv_ms.get)
        for spread_name, spread in SPREADS:
            positions = grid_positions((3, 3), (1, 1)).expand(sets, 9, 2).clone()
            if spread:
                positions = (torch.rand(sets, 9, 2, generator=gen) * 2 - 1) * spread
                positions[:, 4] = 0
            leaves = [
                x.clone().requires_grad_(),
                weight3.reshape(c_out, -1, 9).clone().requires_grad_(),
                positions.requires_grad_(),
            ]
            xin, w, p = leaves
            acu_args = (xin, w, p, None, stride, groups)
            nat = median_ms(fwd_bwd(native.native_active_conv2d, acu_args, leaves, grad))
            xcl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
            cl_args = (xcl, w, p, None, stride, groups)
            nat_cl = median_ms(fwd_bwd(native.native_active_conv2d, cl_args, [xcl, w, p], grad))
            auto = float("nan")
            if not args.no_auto:
                auto = median_ms(fwd_bwd(auto_path, acu_args, leaves, grad))
            best = conv_ms[best_fmt]
            print(
                f"{name:16} {spread_name:6} {best:8.1f} {best_fmt:4} {nat:9.1f} {nat / best:6.2f} "
                f"{nat_cl:9.1f} {auto:8.1f} {auto / best:9.2f}",
                flush=True,
            )
        print(f"{'':16} conv NCHW {conv_ms['NCHW']:.1f} ms, channels_last {conv_ms['CL']:.1f} ms")


if __name__ == "__main__":
    main()
