"""Operator benchmark: ACU forward and forward+backward against a 3x3 conv and deform_conv2d.

Prints a table of medians (ms) and ratios to baselines measured in the same run:
- conv: ``nn.Conv2d`` 3x3 with the same groups;
- deform: ``torchvision.ops.deform_conv2d`` expressing the same ACU with constant offsets
  (timed once per shape, at +-1.5).

Each cell is a median over repeats; the conv and the kernels are timed in interleaved rounds
(``--rounds``) and each cell keeps its best round, so that drift of this shared machine moves
baseline and ACU alike. With ``--format both`` (the default) every candidate, the conv
included, is timed in NCHW and in channels_last and keeps its faster format.

``--kernels`` entries: ``auto`` (the kernel plan chooses), a name from ``acuzoo.ops.KERNELS``
(forced for every direction it runs), or ``FWD+BWD`` (a forced pair, e.g.
``cpu.merged_conv+cpu.depthwise_blocks``). A forced kernel that cannot serve a row prints
``-``. The last column is the plan's own choice (``explain``: forward/backward kernel) in the
format ``auto`` kept.

Shapes (``--shapes``): MobileNetV2's depthwise layers at 224 px, batch 32; Xception's depthwise
ACU layers at 299 px (C128 147x147 at batch 16, C728 37x37 and 19x19 at batch 32); a dense CIFAR
layer (64 -> 64, 32x32, batch 128, one shared position set); and the narrow-group layer of
cifar_resnet29_x4d_acu (64 -> 64 in 16 groups of 4, a position set per group, 32x32, batch 128).
Positions at init, spread +-1.5, +-3 (``--spreads``; "+-6" adds far synapses).

    .venv/bin/python bench/ops.py [--kernels auto cpu.depthwise_planes ...] [--threads 2]
        [--format both|nchw|channels_last] [--csv cells.csv] [--shapes "dw C384 14" ...]
        [--rounds 3] [--budget 0.3] [--allocator glibc-keep] [--no-deform]

``--csv PATH`` writes one row per cell (shape, spread, kernel): the kept format, fwd_ms, fb_ms,
the conv's conv_fwd_ms and conv_fb_ms, ``picks`` (the plan in that format) and ``ran`` (the
kernels that ran), so that an A/B can be computed from files (bench/ab.py).

The package timed is the one on PYTHONPATH if set (bench/ab.py points it at another checkout),
else this checkout's; a checkout older than the kernel plan serves ``--kernels auto`` only.

glibc's malloc hands large buffers back to the OS after every call (buffers above its
32 MiB mmap-threshold ceiling always are), so page faults can dominate, and differently
for the baseline and the ACU. By default (``glibc-keep``) the script re-executes itself
with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64GiB (no mmap'd chunks, no trimming);
``jemalloc`` preloads Debian's libjemalloc2 where installed; ``glibc`` keeps the defaults.
The table's first line says which allocator the run used.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
ALLOCATORS = ("glibc-keep", "jemalloc", "glibc")

# glibc kept from handing large buffers back: no mmap'd chunks, heap never trimmed.
GLIBC_KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def reexec_with_allocator(choice: str) -> str:
    """Re-execute this script with the allocator's settings (once); returns its description."""
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
    "xc dw C128 147": (128, 128, 147, 147, 1, 128, 128, 16),
    "xc dw C728 37": (728, 728, 37, 37, 1, 728, 728, 32),
    "xc dw C728 19": (728, 728, 19, 19, 1, 728, 728, 32),
    "dense 64 32 P1": (64, 64, 32, 32, 1, 1, 1, 128),
    "g16 64 32 P16": (64, 64, 32, 32, 1, 16, 16, 128),
}
SPREADS = {"init": 0.0, "+-1.5": 1.5, "+-3": 3.0, "+-6": 6.0}
DEFAULT_SPREADS = ("init", "+-1.5", "+-3")  # "+-6": far synapses, where columns outrun the dense box
CSV_FIELDS = ("shape", "spread", "kernel", "format", "fwd_ms", "fb_ms", "conv_fwd_ms", "conv_fb_ms", "picks", "ran")


def median_ms(fn: Callable[[], object], min_reps: int = 3, budget_s: float = 1.0) -> float:
    fn()  # warm-up: allocations, kernel selection
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 30):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def kept_format(per_format: dict[str, list[float]]) -> tuple[str, float, float] | None:
    """(format of the best f+b, best forward over the formats, best f+b); None: nothing timed."""
    if not per_format:
        return None
    fmt_name = min(per_format, key=lambda f: per_format[f][1])
    return fmt_name, min(v[0] for v in per_format.values()), per_format[fmt_name][1]


def time_interleaved(candidates: dict[str, dict[str, tuple]], rounds: int, budget: float) -> dict:
    """Best (forward, forward+backward) ms of every candidate in every format it runs.

    Rounds interleave the baseline with the kernels, so that a machine slowing down or
    speeding up mid-row moves both sides; each timing keeps its best round."""
    best = {key: {f: [float("inf"), float("inf")] for f in per_format} for key, per_format in candidates.items()}
    for _ in range(rounds):
        for key, per_format in candidates.items():
            for fmt_name, (fwd, fb) in per_format.items():
                cell = best[key][fmt_name]
                cell[0] = min(cell[0], median_ms(fwd, budget_s=budget))
                cell[1] = min(cell[1], median_ms(fb, budget_s=budget))
    return best


def kernel_context(spec: str, force: Callable | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context that runs ``spec``: the plan's choice, a forced kernel or pair."""
    if spec == "auto":
        return contextlib.nullcontext
    if "+" in spec:
        forward, backward = spec.split("+")
        return partial(force, forward=forward, backward=backward)
    return partial(force, spec)


def check_kernel_specs(specs: list[str], kernels: dict | None) -> None:
    for spec in specs:
        if spec == "auto":
            continue
        if kernels is None:
            raise SystemExit(f"--kernels {spec}: this acuzoo has no kernel plan (acuzoo.ops.KERNELS); only auto")
        names = spec.split("+")
        unknown = [name for name in names if name not in kernels]
        if len(names) > 2 or unknown:
            raise SystemExit(
                f"--kernels {spec}: entries are auto, a kernel name or FWD+BWD; kernels: {', '.join(kernels)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", default=["auto"], help="auto, kernel names, FWD+BWD pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=ALLOCATORS, default="glibc-keep")
    parser.add_argument("--format", choices=["both", "nchw", "channels_last"], default="both")
    parser.add_argument("--csv", type=Path, help="write one row per (shape, spread, kernel) cell here")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), metavar="SHAPE")
    parser.add_argument("--spreads", nargs="+", default=list(DEFAULT_SPREADS), choices=list(SPREADS))
    parser.add_argument("--no-deform", action="store_true", help="skip the (slow) deform_conv2d baseline")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each timing keeps its best")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of repeats per timing and round")
    args = parser.parse_args()
    allocator = reexec_with_allocator(args.allocator)

    import torch
    import torch.nn.functional as F
    from torchvision.ops import deform_conv2d

    sys.path.append(str(ROOT))  # after PYTHONPATH: bench/ab.py's checkout wins
    import acuzoo.ops
    from acuzoo.nn.active_conv import grid_positions
    from acuzoo.ops import active_conv2d

    kernels, explain, force = (getattr(acuzoo.ops, name, None) for name in ("KERNELS", "explain", "force"))
    check_kernel_specs(args.kernels, kernels)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"acuzoo {Path(acuzoo.ops.__file__).parents[2]}")
    print(f"torch {torch.__version__}, {args.threads} threads, float32, allocator: {allocator}")
    grid = grid_positions((3, 3), (1, 1))
    named_formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    formats = named_formats if args.format == "both" else {args.format: named_formats[args.format]}

    def fwd_bwd(op, leaves, grad):
        def run():
            for t in leaves:
                t.grad = None
            op().backward(grad)

        return run

    def under(context, fn):
        def run():
            with context():
                return fn()

        return run

    def plan_text(call_args, x, context=contextlib.nullcontext) -> str:
        if explain is None:
            return "-"
        with context():
            plan = explain(call_args, x)
        return f"{plan.forward}/{plan.backward}"

    def serves(fn) -> bool:
        try:
            fn()
        except ValueError:
            return False
        return True

    widths = {spec: max(10, len(spec) + 5) for spec in args.kernels}
    header = f"{'shape':<16}{'spread':>7}{'conv fwd':>10}{'conv f+b':>10}"
    for spec in args.kernels:
        header += f"{spec + ' fwd':>{widths[spec]}}{'x conv':>8}{spec + ' f+b':>{widths[spec]}}{'x conv':>8}"
    header += f"{'deform f+b':>12}{'deform/acu':>11}  plan picks"
    print(header)
    cells: list[dict] = []
    for name in args.shapes:
        c_in, c_out, h, w, s, g, p, n = SHAPES[name]
        x = torch.randn(n, c_in, h, w)
        grad = torch.randn(n, c_out, (h - 1) // s + 1, (w - 1) // s + 1)
        conv_w = torch.randn(c_out, c_in // g, 3, 3, requires_grad=True)
        deform_fb = None
        for spread_name in args.spreads:
            spread = SPREADS[spread_name]
            pos = grid.expand(p, 9, 2).clone()
            if spread:
                pos = (torch.rand(p, 9, 2) * 2 - 1) * spread
            pos.requires_grad_()
            weight = torch.randn(c_out, c_in // g, 9, requires_grad=True)
            call_args = (weight, pos, None, s, g)
            # Every candidate (the conv and each kernel spec, in each memory format) as
            # (forward, forward+backward) closures, keyed by format; each keeps its faster one.
            candidates: dict[str, dict[str, tuple]] = {"conv": {}, **{spec: {} for spec in args.kernels}}
            picks, ran = {}, {}
            for fmt_name, fmt in formats.items():
                # A fresh leaf per format: without detach, x.contiguous() is x itself for NCHW,
                # x turns into a leaf that needs grad, and every later channels_last backward
                # also runs the copy's backward into x.
                xf = x.detach().contiguous(memory_format=fmt).requires_grad_()
                gf = grad.contiguous(memory_format=fmt)
                op = partial(F.conv2d, xf, conv_w, None, s, 1, 1, g)
                candidates["conv"][fmt_name] = (op, fwd_bwd(op, [xf, conv_w], gf))
                picks[fmt_name] = plan_text(call_args, xf)
                for spec in args.kernels:
                    context = kernel_context(spec, force)
                    op = partial(active_conv2d, xf, weight, pos, None, s, g)
                    closures = (under(context, op), under(context, fwd_bwd(op, [xf, weight, pos], gf)))
                    if serves(closures[1]):  # a forced kernel may refuse this geometry
                        candidates[spec][fmt_name] = closures
                        ran[spec, fmt_name] = plan_text(call_args, xf, context)
            best = time_interleaved(candidates, args.rounds, args.budget)

            conv_fmt, conv_fwd, conv_fb = kept_format(best["conv"])
            auto = kept_format(best["auto"]) if "auto" in best else None
            picks_fmt = auto[0] if auto else conv_fmt
            row = f"{name:<16}{spread_name:>7}{conv_fwd:>10.2f}{conv_fb:>10.2f}"
            timed = []
            for spec in args.kernels:
                result, wd = kept_format(best[spec]), widths[spec]
                cell = dict(shape=name, spread=spread_name, kernel=spec, picks=picks[picks_fmt])
                cell.update(conv_fwd_ms=f"{conv_fwd:.4f}", conv_fb_ms=f"{conv_fb:.4f}")
                cells.append(cell)
                if result is None:
                    row += f"{'-':>{wd}}{'-':>8}{'-':>{wd}}{'-':>8}"
                    continue
                fmt_name, t_fwd, t_fb = result
                timed.append(t_fb)
                row += f"{t_fwd:>{wd}.2f}{t_fwd / conv_fwd:>8.2f}{t_fb:>{wd}.2f}{t_fb / conv_fb:>8.2f}"
                cell.update(format=fmt_name, fwd_ms=f"{t_fwd:.4f}", fb_ms=f"{t_fb:.4f}")
                cell.update(picks=picks[fmt_name], ran=ran[spec, fmt_name])
            if deform_fb is None and not args.no_deform and spread_name == "+-1.5":
                xr = x.clone().requires_grad_()
                offsets = (pos.detach() - grid).reshape(1, -1, 1, 1)
                ho, wo = grad.shape[-2:]
                off = offsets.expand(n, -1, ho, wo).contiguous().requires_grad_()
                dw = weight.detach().reshape(c_out, c_in // g, 3, 3).requires_grad_()
                op = partial(deform_conv2d, xr, off, dw, None, (s, s), (1, 1))
                deform_fb = median_ms(fwd_bwd(op, [xr, off, dw], grad), min_reps=1, budget_s=0)
            show_deform = deform_fb is not None and timed
            ratio = f"{deform_fb / min(timed):>11.0f}" if show_deform else f"{'-':>11}"
            deform_text = f"{deform_fb:>12.0f}" if deform_fb is not None else f"{'-':>12}"
            fmt_tag = "cl" if picks_fmt == "channels_last" else picks_fmt
            print(f"{row}{deform_text}{ratio}  {fmt_tag} {picks[picks_fmt]}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
            writer.writeheader()
            writer.writerows(cells)
        print(f"cells written to {args.csv}")


if __name__ == "__main__":
    main()
