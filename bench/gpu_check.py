"""One-shot GPU check of the native ACU extension: build, correctness, benchmark, table.

    python3 bench/gpu_check.py                 # on the lent GPU machine, from the repo root
    python3 bench/gpu_check.py --cpu-dry-run   # here: the same logic on the CPU, tiny sizes

Needs torch and acuzoo/ops (the top-level ``acuzoo`` package is bypassed), and timm for the
last step only. Steps, each reported even if an earlier one failed:

1. build the CUDA extension for sm_90 (``ACUZOO_CUDA_ARCH``; ``MAX_JOBS`` defaults to 16);
2. correctness on CUDA against the float64 reference (eq. 5, on the CPU): forward and
   gradients < 1e-10 in float64 of every native kernel of the device (``acuzoo.ops.KERNELS``:
   ``cuda.depthwise``, ``cuda.columns``) on every case it serves, forced by name; the
   integer-position rule, channels_last and
   non-contiguous input, a large case against the CPU extension (many blocks/chunks),
   float32/float16/bfloat16 against float64 (relative L2 error), autocast-style fp16 input
   with fp32 parameters, bitwise determinism of the gradients;
3. forward+backward of MobileNetV2's depthwise layers at batch 128 (init, +-1.5, +-3):
   the ``cuda.depthwise`` kernel ("native") vs cuDNN's depthwise 3x3 (best of NCHW and
   channels_last) vs the ``dense`` kernel (Theorem 2's merged kernel through cuDNN);
   achieved bandwidth against a measured device-to-device copy; peak extra memory of the
   backward against the input's size;
4. a training step (forward+backward, batch 128, 224 px) of timm's MobileNetV2 and of
   mobilenetv2_acu_100.

The CPU dry run takes the CPU's kernels in their place: ``cpu.*`` for the correctness matrix,
``cpu.depthwise_blocks`` for ``cuda.depthwise``, ``cpu.columns`` for ``cuda.columns``.

Timing: CUDA events, warm-up, median of many repetitions. Everything printed also goes to
``$OUT/gpu_check.log`` when ``$OUT`` is set. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


# ---- output: stdout and $OUT/gpu_check.log ---------------------------------------------


class Log:
    def __init__(self) -> None:
        out = os.environ.get("OUT")
        self.file = open(Path(out, "gpu_check.log"), "w") if out else None  # noqa: SIM115

    def __call__(self, *parts) -> None:
        text = " ".join(str(p) for p in parts)
        stamp = f"[{time.perf_counter() - T0:6.1f}s] "
        print(stamp + text, flush=True)
        if self.file:
            self.file.write(stamp + text + "\n")
            self.file.flush()


log = Log()
FAILURES: list[str] = []
TABLE: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> bool:
    log(("PASS " if ok else "FAIL ") + what + (f"  ({detail})" if detail else ""))
    if not ok:
        FAILURES.append(what)
    return ok


def section(name: str):
    """Run a step; an exception is a loud failure of that step, not of the script."""

    def wrap(fn):
        def run(*args, **kwargs):
            log(f"== {name}")
            try:
                return fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - report and go on to the next step
                FAILURES.append(f"{name}: exception")
                log(f"FAIL {name}: exception\n{traceback.format_exc()}")
                return None

        return run

    return wrap


# ---- imports without the top-level package (it imports timm and the model zoo) ---------


def import_ops():
    """(acuzoo.ops, acuzoo.ops.native), imported without the top-level package."""
    if "acuzoo" not in sys.modules:
        stub = types.ModuleType("acuzoo")
        stub.__path__ = [str(REPO / "acuzoo")]
        sys.modules["acuzoo"] = stub
    return importlib.import_module("acuzoo.ops"), importlib.import_module("acuzoo.ops.native")


# The kernel a step names, per device: the CPU dry run takes the CPU's kernel of the same job.
DEPTHWISE_KERNEL = {"cuda": "cuda.depthwise", "cpu": "cpu.depthwise_blocks"}
COLUMNS_KERNEL = {"cuda": "cuda.columns", "cpu": "cpu.columns"}


def forced(ops, name):
    """active_conv2d with the named kernel (a forward-only kernel takes the plan's backward)."""

    def run(x, weight, positions, bias, stride, groups):
        return ops.active_conv2d(x, weight, positions, bias, stride, groups, path=name)

    return run


def named_native(native, name):
    """The native op running the named kernel both ways, without the plan's checks (as timed)."""

    def run(x, weight, positions, bias, stride, groups):
        return native.native_active_conv2d(x, weight, positions, bias, stride, groups, name, name)

    return run


def native_kernels(ops, device) -> list[str]:
    return [name for name, kernel in ops.KERNELS.items() if kernel.native and kernel.device == device]


def serves(ops, name, args) -> bool:
    """Whether the named kernel can run this call (the plan's check, through explain)."""
    x, weight, positions, bias, stride, groups = args
    try:
        with ops.force(name):
            ops.explain((weight, positions, bias, stride, groups), x)
    except ValueError:
        return False
    return True


# ---- helpers -------------------------------------------------------------------------------


def make_args(torch, case, spread, dtype, device, k=9, seed=0):
    n, c_in, c_out, h, w, groups, sets, stride = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, generator=gen, dtype=torch.float64)
    if spread is None:
        positions = torch.randint(-2, 3, (sets, k, 2), generator=gen).double()
    else:
        positions = (torch.rand(sets, k, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    positions[:, k // 2] = 0
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    pos_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (
        x.to(device, dtype),
        weight.to(device, dtype),
        positions.to(device, pos_dtype),
        bias.to(device, dtype),
        stride,
        groups,
    )


def with_grads(torch, fn, args, seed=1):
    x, weight, positions, bias, stride, groups = args
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, bias)]
    out = fn(*leaves, stride, groups)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, g.to(out.device, out.dtype))
    return out, list(grads)


def max_err(a, b) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


def rel_l2(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


CASES = {
    "depthwise": (2, 6, 6, 7, 8, 6, 6, 1),
    "depthwise_s2": (2, 6, 6, 7, 8, 6, 6, 2),
    "depthwise_P2": (2, 4, 4, 5, 6, 4, 2, 2),
    "depthwise_P1": (1, 4, 4, 6, 5, 4, 1, 1),
    "dense_P1": (2, 5, 6, 6, 7, 1, 1, 1),
    "dense_P1_s2": (1, 5, 6, 7, 6, 1, 1, 2),
    "dense_Pcout": (1, 3, 4, 5, 5, 1, 4, 1),
    "dense_P2": (2, 4, 6, 6, 6, 1, 2, 2),
    "grouped_P4_g4": (2, 8, 8, 5, 6, 4, 4, 1),
    "grouped_P2_g4": (1, 8, 8, 6, 5, 4, 2, 2),
    "grouped_P4_g2": (1, 4, 8, 5, 7, 2, 4, 1),
    "tiny_1x1": (1, 3, 3, 1, 1, 3, 3, 1),
    "odd_13x2_s3": (1, 3, 4, 13, 2, 1, 2, 3),
    "depthwise_s3": (2, 6, 6, 13, 11, 6, 6, 3),
    "depthwise_5x5": (2, 5, 5, 11, 10, 5, 5, 1),
    "depthwise_5x5_s2": (2, 5, 5, 11, 10, 5, 5, 2),
    "depthwise_4x4_s3": (1, 5, 5, 11, 10, 5, 5, 3),
    "depthwise_s2x1": (2, 5, 5, 11, 10, 5, 5, (2, 1)),
}
# Synapse counts per case (default 9): 25 and 16 give tables of more than 32 cells (two
# passes of the CUDA kernel's cell dots).
SYNAPSES = {"depthwise_5x5": 25, "depthwise_5x5_s2": 25, "depthwise_4x4_s3": 16}
SPREADS = {"grid": None, "inside": 0.9, "1.5": 1.5, "4": 4.0, "far": 12.0, "beyond": 30.0}
NAMES = ("input", "weight", "positions", "bias")


# ---- steps -------------------------------------------------------------------------------


@section("build")
def build(native, device):
    os.environ.setdefault("MAX_JOBS", "16")
    variant = "cuda" if device == "cuda" else None
    start = time.perf_counter()
    loaded = native.load(variant, verbose=False)
    seconds = time.perf_counter() - start
    ok = loaded is not None and (device != "cuda" or loaded == "cuda")
    where = native.cache_root() / native.build_name(loaded or "cpu")
    detail = f"{seconds:.0f} s, arch {native._cuda_arch()}, {where}" if ok else f"{native._failed}"
    check(ok, f"extension built and loaded (variant {loaded})", detail)
    if ok:
        check(native.native_available(device), f"native_available({device!r})")
    TABLE.append(f"build: {'ok' if ok else 'FAILED'} in {seconds:.0f} s (variant {loaded})")
    return ok


@section("correctness, float64 against the reference, every native kernel")
def correctness_fp64(torch, ops, device):
    kernels = native_kernels(ops, device)
    worst = dict.fromkeys(kernels, 0.0)
    served = dict.fromkeys(kernels, 0)
    for name, case in CASES.items():
        for spread_name, spread in SPREADS.items():
            k = SYNAPSES.get(name, 9)
            args = make_args(torch, case, spread, torch.float64, device, k=k)
            ref_args = make_args(torch, case, spread, torch.float64, "cpu", k=k)
            ref, ref_grads = with_grads(torch, ops.reference_active_conv2d, ref_args)
            for kernel in kernels:
                if not serves(ops, kernel, args):
                    continue
                served[kernel] += 1
                out, grads = with_grads(torch, forced(ops, kernel), args)
                errs = [max_err(out, ref)] + [max_err(a, b) for a, b in zip(grads, ref_grads)]
                worst[kernel] = max(worst[kernel], *errs)
                if max(errs) >= 1e-10:
                    check(
                        False,
                        f"fp64 {kernel} {name} spread {spread_name}",
                        "errors " + ", ".join(f"{n}={e:.1e}" for n, e in zip(("out", *NAMES), errs)),
                    )
    for kernel in kernels:
        check(
            served[kernel] > 0 and worst[kernel] < 1e-10,
            f"fp64 forward+gradients of {kernel} == reference on the {served[kernel]} cases it serves "
            f"(of {len(CASES)}x{len(SPREADS)})",
            f"worst max abs error {worst[kernel]:.1e}",
        )
        TABLE.append(f"fp64 vs reference, {kernel}: worst {worst[kernel]:.1e} on {served[kernel]} cases (limit 1e-10)")


@section("layouts: channels_last and non-contiguous input")
def layouts(torch, native, device):
    args = make_args(torch, (2, 16, 16, 15, 17, 16, 16, 2), 1.5, torch.float64, device)
    x = args[0]
    out, grads = with_grads(torch, native.native_active_conv2d, args)
    cl = (x.contiguous(memory_format=torch.channels_last), *args[1:])
    out_cl, grads_cl = with_grads(torch, native.native_active_conv2d, cl)
    # CUDA converts to NCHW inside, so the bits match; the CPU dry run reads channels-last in
    # place (another summation order), so there float64 rounding is the bar.
    same = torch.equal if device != "cpu" else (lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-12))
    check(
        same(out, out_cl) and all(same(a, b) for a, b in zip(grads, grads_cl)),
        "channels_last input gives the same output and gradients"
        + (" (bitwise)" if device != "cpu" else " (to 1e-12)"),
    )
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    out_nc = native.native_active_conv2d(wide[..., ::2], *args[1:])
    check(torch.equal(out, out_nc), "non-contiguous input gives the same output")


@section("large case against the CPU extension (many blocks and chunks)")
def large_vs_cpu(torch, native, device, small):
    cases = {
        "depthwise": (8, 24, 24, 57, 59, 24, 24, 1),
        "depthwise_s2": (6, 32, 32, 61, 47, 32, 32, 2),
        "grouped": (4, 16, 16, 21, 19, 4, 2, 1),
    }
    if small:
        cases = {k: (1, *v[1:3], 9, 11, *v[5:]) for k, v in cases.items()}
    for name, case in cases.items():
        for spread in (None, 3.0):
            out, grads = with_grads(
                torch, native.native_active_conv2d, make_args(torch, case, spread, torch.float64, device)
            )
            ref, ref_grads = with_grads(
                torch, native.native_active_conv2d, make_args(torch, case, spread, torch.float64, "cpu")
            )
            errs = [rel_l2(out, ref)] + [rel_l2(a, b) for a, b in zip(grads, ref_grads)]
            check(
                max(errs) < 1e-12,
                f"{name} {case} spread {spread}: device fp64 == CPU extension fp64",
                f"worst relative L2 {max(errs):.1e}",
            )


@section("reduced precision against float64")
def precision(torch, native, device):
    case = (4, 32, 32, 28, 29, 32, 32, 1)
    ref_out, ref_grads = with_grads(
        torch, native.native_active_conv2d, make_args(torch, case, 1.5, torch.float64, device)
    )
    limits = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
    if device == "cpu":
        limits = {torch.float32: 1e-5}
    for dtype, limit in limits.items():
        out, grads = with_grads(torch, native.native_active_conv2d, make_args(torch, case, 1.5, dtype, device))
        errs = {"out": rel_l2(out, ref_out)} | {n: rel_l2(a, b) for n, a, b in zip(NAMES, grads, ref_grads)}
        finite = all(bool(torch.isfinite(t).all()) for t in (out, *grads))
        check(
            finite and max(errs.values()) < limit,
            f"{str(dtype)[6:]} vs float64, relative L2 < {limit:g}",
            ", ".join(f"{n}={e:.1e}" for n, e in errs.items()),
        )
        TABLE.append(f"{str(dtype)[6:]:8} vs fp64: worst rel L2 {max(errs.values()):.1e} (limit {limit:g})")
    if device == "cuda":
        # Autocast-style call: fp16 input, fp32 weight/bias/positions.
        x, w, p, b, s, g = make_args(torch, case, 1.5, torch.float32, device)
        x16 = x.half().requires_grad_()
        w.requires_grad_()
        p.requires_grad_()
        out = native.native_active_conv2d(x16, w, p, b, s, g)
        out.float().sum().backward()
        check(
            out.dtype == torch.float16
            and w.grad.dtype == torch.float32
            and p.grad.dtype == torch.float32
            and x16.grad.dtype == torch.float16,
            "fp16 input with fp32 parameters: dtypes of output/grads",
        )


@section("determinism (bitwise equal gradients twice)")
def determinism(torch, ops, device, small):
    cases = {
        DEPTHWISE_KERNEL[device]: (16, 64, 64, 56, 56, 64, 64, 1),
        COLUMNS_KERNEL[device]: (8, 32, 32, 32, 32, 1, 1, 1),
    }
    if small:
        cases = {DEPTHWISE_KERNEL[device]: (2, 8, 8, 9, 9, 8, 8, 1), COLUMNS_KERNEL[device]: (2, 8, 8, 9, 9, 1, 1, 1)}
    for kernel, case in cases.items():
        for dtype in (torch.float32, torch.float16) if device == "cuda" else (torch.float32,):
            args = make_args(torch, case, 1.5, dtype, device)
            _, first = with_grads(torch, forced(ops, kernel), args)
            _, second = with_grads(torch, forced(ops, kernel), args)
            same = all(torch.equal(a, b) for a, b in zip(first, second))
            check(same, f"{kernel} {str(dtype)[6:]}: gradients bitwise equal twice")


@section("torch.compile through the op")
def compile_check(torch, native, device):
    # The op with its kernels named: choosing them reads the positions' values, which a
    # graph cannot; models plan eagerly and call this op.
    for kernel, case in ((COLUMNS_KERNEL[device], "grouped_P4_g4"), (DEPTHWISE_KERNEL[device], "depthwise_s2")):
        args = make_args(torch, CASES[case], 1.5, torch.float64, device)
        op = named_native(native, kernel)
        compiled = torch.compile(op, backend="aot_eager", fullgraph=True)
        out, grads = with_grads(torch, compiled, args)
        ref, ref_grads = with_grads(torch, op, args)
        check(
            max_err(out, ref) < 1e-12 and all(max_err(a, b) < 1e-12 for a, b in zip(grads, ref_grads)),
            f"torch.compile(backend='aot_eager') of {kernel} == eager, forward and gradients ({case})",
        )


class Timer:
    def __init__(self, torch, device, warmup, reps):
        self.torch, self.cuda, self.warmup, self.reps = torch, device == "cuda", warmup, reps

    def median_ms(self, fn) -> float:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times)


@section("device-to-device copy bandwidth")
def copy_bandwidth(torch, device, timer, small) -> float:
    n = (1 << 20) if small else (1 << 28)  # 1 GiB of float32 on the GPU
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    gbs = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    log(f"copy {src.numel() * 4 / 2**20:.0f} MiB: {ms:.3f} ms, {gbs:.0f} GB/s (bytes read + written)")
    TABLE.append(f"copy bandwidth: {gbs:.0f} GB/s (read + written)")
    return gbs


SHAPES = [  # name, c, size, stride (MobileNetV2's depthwise layers at 224 px)
    ("C96 112 s2", 96, 112, 2),
    ("C144 56", 144, 56, 1),
    ("C192 28", 192, 28, 1),
    ("C384 14", 384, 14, 1),
    ("C960 7", 960, 7, 1),
]


def fwd_bwd(fn, args, leaves, grad):
    """A step: forward of fn(*args), backward of grad, leaves' .grad cleared first."""

    def run():
        for t in leaves:
            t.grad = None
        fn(*args).backward(grad)

    return run


def no_grad_call(torch, fn, args):
    def run():
        with torch.no_grad():
            fn(*args)

    return run


def grid3(torch):
    rows, cols = torch.meshgrid(torch.arange(3) - 1, torch.arange(3) - 1, indexing="ij")
    return torch.stack([rows, cols], -1).reshape(9, 2).float()


def run_benchmark(torch, ops, native, device, timer, batch, copy_gbs, deadline):
    import torch.nn.functional as F

    kernel = DEPTHWISE_KERNEL[device]
    acu, dense_kernel = named_native(native, kernel), forced(ops, "dense")

    log(f"== benchmark: depthwise layers, forward+backward; native = {kernel}, dense = the dense kernel")
    header = (
        f"{'layer':11} {'spread':6} {'cudnn':>7} {'fmt':4} {'native':>7} {'x cudnn':>7} "
        f"{'dense':>7} {'x dense':>7} {'fwd':>6} {'GB/s':>6} {'%copy':>5} {'bwd mem':>7} "
        f"{'CL-in':>7} {'bf16':>7} {'dx':>6} {'dw,dp':>6}"
    )
    rows = [header, "-" * len(header)]
    gen = torch.Generator().manual_seed(0)
    for name, c, size, stride in SHAPES:
        if time.perf_counter() > deadline:
            log(f"time budget reached: skipping {name} and the rest")
            FAILURES.append("benchmark incomplete (time budget)")
            break
        try:
            x = torch.randn(batch, c, size, size, generator=gen).to(device)
            out_size = (size - 1) // stride + 1
            grad = torch.randn(batch, c, out_size, out_size, generator=gen).to(device)
            w3 = (torch.randn(c, 1, 3, 3, generator=gen) * 0.1).to(device)
            conv = {}
            for fmt, mf in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
                xf = x.contiguous(memory_format=mf).requires_grad_()
                wf = w3.contiguous(memory_format=mf).requires_grad_()
                conv_args = (xf, wf, None, stride, 1, 1, c)
                conv[fmt] = timer.median_ms(fwd_bwd(F.conv2d, conv_args, (xf, wf), grad.contiguous(memory_format=mf)))
            fmt = min(conv, key=conv.get)
            for spread_name, spread in (("init", 0.0), ("+-1.5", 1.5), ("+-3", 3.0)):
                positions = grid3(torch).expand(c, 9, 2).clone()
                if spread:
                    positions = (torch.rand(c, 9, 2, generator=gen) * 2 - 1) * spread
                    positions[:, 4] = 0
                positions = positions.to(device).requires_grad_()
                xin = x.clone().requires_grad_()
                w = w3.reshape(c, 1, 9).clone().requires_grad_()
                acu_args = (xin, w, positions, None, stride, c)
                leaves = (xin, w, positions)
                nat = timer.median_ms(fwd_bwd(acu, acu_args, leaves, grad))
                fwd = timer.median_ms(no_grad_call(torch, acu, acu_args))
                dense = timer.median_ms(fwd_bwd(dense_kernel, acu_args, leaves, grad))
                x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
                cl_args = (x_cl, w, positions, None, stride, c)
                nat_cl = timer.median_ms(fwd_bwd(acu, cl_args, (x_cl, w, positions), grad))
                del x_cl, cl_args
                bf16 = float("nan")
                if device == "cuda":
                    x16 = x.bfloat16().requires_grad_()
                    w16 = w.detach().bfloat16().requires_grad_()
                    args16 = (x16, w16, positions, None, stride, c)
                    bf16 = timer.median_ms(fwd_bwd(acu, args16, (x16, w16, positions), grad.bfloat16()))
                    del x16, w16, args16
                # The backward's two halves alone: input gradient; weight and position sums.
                bwd_op = torch.ops.acuzoo.active_conv2d_backward
                xd, wd, pd = x, w.detach(), positions.detach()
                halves = [
                    timer.median_ms(no_grad_call(torch, bwd_op, (grad, xd, wd, pd, [stride] * 2, c, mask, kernel)))
                    for mask in ([True, False, False], [False, True, True])
                ]
                # Bytes a fused fwd+bwd must move: read x, write y; read dy and x, write dx.
                bytes_moved = 4 * (3 * x.numel() + 2 * grad.numel())
                gbs = bytes_moved / (nat * 1e-3) / 1e9
                mem = peak_backward_ratio(torch, acu, xin, w, positions, stride, c, grad, device)
                row = (
                    f"{name:11} {spread_name:6} {conv[fmt]:7.3f} {fmt:4} {nat:7.3f} {nat / conv[fmt]:7.2f} "
                    f"{dense:7.3f} {nat / dense:7.2f} {fwd:6.3f} {gbs:6.0f} "
                    f"{100 * gbs / copy_gbs if copy_gbs else float('nan'):5.0f} {mem:7.2f} "
                    f"{nat_cl:7.3f} {bf16:7.3f} {halves[0]:6.3f} {halves[1]:6.3f}"
                )
                log(row)
                rows.append(row)
            del x, grad
            if device == "cuda":
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            FAILURES.append(f"benchmark {name}: exception")
            log(f"FAIL benchmark {name}: exception\n{traceback.format_exc()}")
    rows.append(
        "times in ms (median, CUDA events); 'x cudnn'/'x dense' = native / baseline; fwd = native "
        "forward alone; GB/s counts x, y, dy, x, dx once; bwd mem = peak extra memory of the "
        "backward / input size (target < 2); CL-in = native fwd+bwd from a channels_last input "
        "(converted inside); dx, dw,dp = the backward op asked for the input gradient alone, for the "
        "weight and position gradients alone; bf16 = native fwd+bwd in bfloat16 (fp32 positions and sums)"
    )
    return rows


def model_step(torch, device, timer, small, deadline):
    """A whole network's training step: timm's MobileNetV2 against the ACU version (the
    paper's Table 8 asks what the ACUs cost a network)."""
    if time.perf_counter() > deadline:
        log("time budget reached: skipping the model step")
        return []
    import timm

    importlib.import_module("acuzoo.models")  # registers the zoo with timm (acuzoo may be the stub)

    batch, size = (2, 64) if small else (128, 224)
    log(f"== model step: forward+backward, batch {batch}, {size} px, float32, NCHW")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)

    def step_ms(model):
        def run():
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), labels).backward()

        return timer.median_ms(run)

    try:
        base = step_ms(timm.create_model("mobilenetv2_100").to(device).train())
        acu = step_ms(timm.create_model("mobilenetv2_acu_100").to(device).train())
    except Exception:  # noqa: BLE001
        FAILURES.append("model step: exception")
        log(f"FAIL model step: exception\n{traceback.format_exc()}")
        return []
    row = (
        f"model step (ms, batch {batch}, {size} px): mobilenetv2_100 {base:.1f}, mobilenetv2_acu_100 {acu:.1f} "
        f"(x{acu / base:.2f})"
    )
    log(row)
    return [row]


def peak_backward_ratio(torch, acu, x, w, p, stride, groups, grad, device) -> float:
    if device != "cuda":
        return float("nan")
    x.grad = w.grad = p.grad = None
    out = acu(x, w, p, None, stride, groups)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out.backward(grad)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    x.grad = w.grad = p.grad = None
    return extra / (x.numel() * x.element_size())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="exercise the script on the CPU, tiny sizes")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop benchmarking after this many seconds")
    args = parser.parse_args()
    deadline = T0 + args.budget_s
    import torch

    device = "cpu" if args.cpu_dry_run else "cuda"
    log(
        f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"device {device}" + (f" = {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    if device == "cuda" and not torch.cuda.is_available():
        log("FAIL no CUDA device visible to torch; nothing to check (use --cpu-dry-run off-GPU)")
        return 1
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        log(
            f"{props.name}: {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
            f"capability {props.major}.{props.minor}"
        )
        TABLE.append(f"device: {props.name}, torch {torch.__version__}")
    ops, native = import_ops()
    if not build(native, device):
        log("FAIL the extension did not build; nothing more to check")
        print_table()
        return 1
    small = args.cpu_dry_run
    correctness_fp64(torch, ops, device)
    layouts(torch, native, device)
    large_vs_cpu(torch, native, device, small)
    precision(torch, native, device)
    determinism(torch, ops, device, small)
    compile_check(torch, native, device)
    timer = Timer(torch, device, warmup=1 if small else 5, reps=2 if small else 25)
    copy_gbs = copy_bandwidth(torch, device, timer, small) or 0.0
    rows = run_benchmark(torch, ops, native, device, timer, 2 if small else 128, copy_gbs, deadline)
    TABLE.extend(rows)
    TABLE.extend(model_step(torch, device, timer, small, deadline + 60))
    print_table()
    return 1 if FAILURES else 0


def print_table() -> None:
    log("== summary")
    for line in TABLE:
        log(line)
    log(
        f"{len(FAILURES)} failure(s)"
        + (": " + "; ".join(FAILURES) if FAILURES else "")
        + f"; total {time.perf_counter() - T0:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
