"""A training step of MobileNetV2 x1.0 with depthwise ACUs against its conv twin, interleaved.

    .venv/bin/python bench/train_step.py [--batch 32] [--size 224] [--steps 5] [--warmup 2]
        [--spread 1.5] [--threads 2] [--allocator glibc-keep] [--explain] [--compile]

Models: ``mobilenetv2_acu_100`` (every depthwise conv a depthwise ACU) and
``mobilenetv2_conv_100`` (the same network with convs), float32, channels_last, random images
and labels, SGD (lr 0.1, momentum 0.9; the positions at lr 1e-3). Before timing, every ACU's
positions move off the grid by uniform(-spread, spread) px, as after some training. A step
is zero_grad, forward, cross-entropy, backward and the optimizer's step. After ``--warmup``
steps of each, rounds alternate one ACU step and one conv step (which goes first alternates
too), so that drift of the machine hits both; prints the medians and ACU/conv.

``--compile`` adds both models compiled by ``torch.compile`` (default backend, inductor) to
the rounds, and prints each compile's time (its first step less a timed step's median), the
compiled ACU/conv ratio and compiled/eager per model.

``--explain`` prints the kernel plan (``acuzoo.ops.explain``) of every ACU layer for the
step's input: name, geometry, forward and backward kernels, and why. The allocator settings
are bench/ops.py's (the script re-executes itself with them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ops import ALLOCATORS, reexec_with_allocator  # bench/ops.py: this script's folder is first on sys.path

MODELS = {"ACU": "mobilenetv2_acu_100", "conv": "mobilenetv2_conv_100"}
LR = 0.1
# Positions train at a hundredth of the weights' lr (the paper's 1e-3 at 0.1; the zoo's
# PositionLearningRate default): at the full lr, random labels carry them a px per few steps
# and the timed kernels would change under the benchmark.
POSITION_LR_MULT = 0.01


def build(name: str, spread: float, seed: int):
    import timm
    import torch

    from acuzoo.nn import ActiveConv2d

    torch.manual_seed(seed)
    model = timm.create_model(name).to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ActiveConv2d):
                module.positions.add_(torch.empty_like(module.positions).uniform_(-spread, spread))
    return model


def make_step(model, images, labels) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    from acuzoo.nn import position_parameters

    positions = list(position_parameters(model))
    others = [p for p in model.parameters() if all(p is not q for q in positions)]
    groups = [{"params": others}, {"params": positions, "lr": LR * POSITION_LR_MULT}]
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def step_ms(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return 1e3 * (time.perf_counter() - start)


def acu_spread(model) -> float:
    """The largest displacement of any movable synapse (px)."""
    from acuzoo.nn import ActiveConv2d

    return max(m.spread() for m in model.modules() if isinstance(m, ActiveConv2d))


def print_plans(model, images) -> None:
    """The kernel plan of every ACU layer, for the input it gets in this model."""
    import torch

    from acuzoo.nn import ActiveConv2d
    from acuzoo.ops import explain

    lines: list[str] = []

    def record(name: str):
        def hook(module, inputs):
            x = inputs[0]
            plan = explain(module, x)
            geometry = (
                f"C{module.in_channels}->{module.out_channels} g{module.groups} {x.shape[-2]}x{x.shape[-1]} "
                f"s{module.stride[0]}"
            )
            lines.append(f"{name:<24}{geometry:<26}{plan.forward} / {plan.backward}")
            lines.extend(f"{'':<50}{reason}" for reason in plan.why)

        return hook

    handles = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, ActiveConv2d)
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    print(f"{'layer':<24}{'geometry':<26}forward / backward kernel, and why")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="image side (px)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each model, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    parser.add_argument("--spread", type=float, default=1.5, help="positions moved by uniform(-s, s) px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=ALLOCATORS, default="glibc-keep")
    parser.add_argument("--explain", action="store_true", help="print every ACU layer's kernel plan")
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    args = parser.parse_args()
    allocator = reexec_with_allocator(args.allocator)

    import torch

    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: bench/ab.py's checkout wins
    import acuzoo

    torch.set_num_threads(args.threads)
    print(f"acuzoo {Path(acuzoo.__file__).parents[1]}")
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32, channels_last, batch {args.batch}, "
        f"{args.size} px, SGD lr {LR} (positions {LR * POSITION_LR_MULT:g}) momentum 0.9, allocator: {allocator}"
    )
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), generator=gen)
    models = {kind: build(name, args.spread, seed=1) for kind, name in MODELS.items()}
    print(f"ACU positions moved by uniform +-{args.spread} px: largest |position| {acu_spread(models['ACU']):.2f} px")
    if args.explain:
        print_plans(models["ACU"], images)
    steps = {kind: make_step(model, images, labels) for kind, model in models.items()}
    first_ms: dict[str, float] = {}
    if args.compile:
        for kind, name in MODELS.items():
            compiled = torch.compile(build(name, args.spread, seed=1))
            steps[f"{kind} compiled"] = make_step(compiled, images, labels)
    for kind, step in steps.items():
        first_ms[kind] = step_ms(step)
        for _ in range(args.warmup - 1):
            step()
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for round_ in range(args.steps):
        order = list(steps) if round_ % 2 == 0 else list(reversed(steps))
        for kind in order:
            times[kind].append(step_ms(steps[kind]))
        print(f"round {round_ + 1}: " + ", ".join(f"{kind} {times[kind][-1]:.0f} ms" for kind in steps), flush=True)
    medians = {kind: statistics.median(t) for kind, t in times.items()}
    print(
        f"median step: {MODELS['ACU']} {medians['ACU']:.1f} ms, {MODELS['conv']} {medians['conv']:.1f} ms, "
        f"ACU/conv {medians['ACU'] / medians['conv']:.3f}"
    )
    if args.compile:
        acu, conv = medians["ACU compiled"], medians["conv compiled"]
        print(f"median compiled step: ACU {acu:.1f} ms, conv {conv:.1f} ms, ACU/conv {acu / conv:.3f}")
        print(
            f"compiled/eager: ACU {acu / medians['ACU']:.3f}, conv {conv / medians['conv']:.3f}; compile time "
            f"(first step less the median): ACU {(first_ms['ACU compiled'] - acu) / 1e3:.1f} s, "
            f"conv {(first_ms['conv compiled'] - conv) / 1e3:.1f} s"
        )
    print(f"largest |position| after the run: {acu_spread(models['ACU']):.2f} px")


if __name__ == "__main__":
    main()
