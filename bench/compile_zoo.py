"""Every zoo model under torch.compile (default backend, inductor, full graph) against eager.

    .venv/bin/python bench/compile_zoo.py [--models NAME ...] [--acu-only] [--size 32] [--batch 2]
        [--variants eval-fp32-nchw train-fp32-channels_last train-bf16-nchw]

Per model and variant: a fresh ``torch.compile(model, fullgraph=True)``, one forward and
backward of ``out.square().sum()`` on random images, the same in eager, and the relative
errors of the output and of every parameter's gradient: ||compiled - eager|| / ||eager|| per
tensor (``grad err``: the worst parameter), and the elementwise max |difference| over max
|eager| (``grad max``: a parameter with tiny gradients, e.g. positions at init, shows
inductor's own reordering of float32 sums there; a conv twin shows the same). Variants name
the mode (``eval``: batch norm with running statistics, no dropout, so compiled and eager
must agree; ``train``: it must run and stay finite, as dropout draws differ between inductor
and eager), the dtype (``bf16``: CPU autocast) and the memory format. Prints one row per
(model, variant) with the compile time (first compiled call less a second one), and last the
worst eval-fp32 errors; exits 1 if any variant failed or an eval-fp32 row exceeds 1e-4
(output) / 1e-3 (gradients), unless its compiled gradients are as close to the model's
float64 gradients as the eager float32 ones (within 10 %): a network whose float32 gradients
are only good to 1e-3 cannot be held to 1e-3 between two float32 runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("eval-fp32-nchw", "eval-fp32-channels_last", "train-fp32-channels_last", "train-bf16-nchw")
DEFAULT_VARIANTS = ("eval-fp32-nchw", "train-fp32-channels_last", "train-bf16-nchw")


def relative(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def relative_max(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def run_variant(name: str, variant: str, size: int, batch: int) -> tuple:
    """(output error, worst gradient error, worst elementwise gradient error, compile seconds,
    all finite, float64 check) of one variant. The float64 check, for an eval-fp32 variant whose
    gradients differ by 1e-3 or more: (compiled, eager) worst gradient error against the eager
    model in float64, i.e. whether compiled is as accurate as eager float32 is."""
    import contextlib
    import copy

    import timm
    import torch

    mode, dtype, fmt = variant.split("-")
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).train(mode == "train").to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def step(fn):
        with autocast:
            out = fn(x)
            loss = out.float().square().sum()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out.detach(), grads

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    out, grads = step(compiled)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(compiled)
    again = time.perf_counter() - start
    ref, want = step(model)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads.values())
    grad_error = max((relative(grads[n], want[n]) for n in want), default=0.0)
    grad_max = max((relative_max(grads[n], want[n]) for n in want), default=0.0)
    float64_check = None
    if variant.startswith("eval-fp32") and grad_error >= 1e-3:
        model64 = copy.deepcopy(model).double()
        model64(x.double()).square().sum().backward()
        truth = {n: p.grad for n, p in model64.named_parameters() if p.grad is not None}
        float64_check = tuple(max(relative(g[n].double(), truth[n]) for n in truth) for g in (grads, want))
    return relative(out, ref), grad_error, grad_max, first - again, finite, float64_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="zoo names (default: every zoo model)")
    parser.add_argument("--acu-only", action="store_true", help="only the zoo models with ACU layers")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--size", type=int, default=32, help="image side (px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import timm
    import torch

    import acuzoo
    from acuzoo.models import is_zoo_model

    torch.set_num_threads(args.threads)
    names = args.models or [n for n in timm.list_models() if is_zoo_model(n)]
    if args.acu_only:
        names = [n for n in names if "acu" in n]
    print(f"acuzoo {Path(acuzoo.__file__).parents[1]}, torch {torch.__version__}, {args.threads} threads")
    print(f"batch {args.batch}, {args.size} px, torch.compile(model, fullgraph=True), default backend")
    print(f"{'model':<30}{'variant':<26}{'out err':>10}{'grad err':>10}{'grad max':>10}{'compile s':>11}  result")
    failures, worst = 0, (0.0, 0.0)
    for name in names:
        for variant in args.variants:
            try:
                out_err, grad_err, grad_max, seconds, finite, float64_check = run_variant(
                    name, variant, args.size, args.batch
                )
            except Exception as error:  # a row per failure, then go on: the table is the report
                failures += 1
                dashes = "".join(f"{'-':>{width}}" for width in (10, 10, 10, 11))
                print(f"{name:<30}{variant:<26}{dashes}  FAILED: {type(error).__name__}: {error}")
                traceback.print_exc(limit=3, file=sys.stderr)
                continue
            checked = variant.startswith("eval-fp32")
            # Gradients 1e-3 apart pass where compiled float32 is as close to float64 as eager is.
            as_accurate = float64_check is not None and float64_check[0] <= 1.1 * float64_check[1]
            ok = finite and (not checked or (out_err < 1e-4 and (grad_err < 1e-3 or as_accurate)))
            failures += not ok
            if checked:
                worst = (max(worst[0], out_err), max(worst[1], grad_err))
            result = ("ok" if ok else "FAILED") + ("" if checked else " (runs, finite)" if finite else " (not finite)")
            if float64_check is not None:
                result += f" (against float64: compiled {float64_check[0]:.1e}, eager {float64_check[1]:.1e})"
            print(
                f"{name:<30}{variant:<26}{out_err:>10.1e}{grad_err:>10.1e}{grad_max:>10.1e}{seconds:>11.1f}  {result}",
                flush=True,
            )
    print(f"worst eval-fp32 errors: output {worst[0]:.1e}, gradients {worst[1]:.1e}; failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
