#!/usr/bin/env python
"""Deployment export: size and CPU inference time of each published ACU checkpoint before and after
fusing its ACUs into ordinary convs (Theorem 2), in PyTorch and in ONNX Runtime, all measured in
the same run (ratios are against the unfused PyTorch model of that run).

    python bench/export.py [--batch 64] [--reps 20] [--threads 1] [model.tag ...]

Sizes: bytes of parameters and buffers (what a weights file holds) and of the ONNX file. Times:
median wall time of one forward pass over a batch of real Fashion-MNIST test images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from acuzoo.hub.export import export_onnx, fused_copy, state_bytes
from acuzoo.hub.pretrained import create_pretrained
from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT, MEAN, STD, grey_transform, load_split
from acuzoo.nn import ActiveConv2d

DEFAULT = ["cifar_resnet29_acu.fmnist", "mobilenetv2_acu_100.fmnist"]


def median_time(run, reps: int) -> float:
    run()  # warm-up (first-call allocations, path choice)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_one(name: str, x: torch.Tensor, reps: int, ort, options) -> None:
    """Print one checkpoint's rows: unfused PyTorch, fused PyTorch, fused ONNX Runtime."""
    model = create_pretrained(name).eval()
    fused = fused_copy(model)
    onnx_bytes = export_onnx(model, None, x[:2])
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = model(x)
        rows = [
            ("PyTorch, ACU", state_bytes(model), lambda: model(x), reference),
            ("PyTorch, fused", state_bytes(fused), lambda: fused(x), fused(x)),
            (
                "ONNX RT, fused",
                len(onnx_bytes),
                lambda: session.run(None, {"images": x.numpy()}),
                torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
            ),
        ]
        base = None
        for variant, size, run, out in rows:
            seconds = median_time(run, reps)
            base = base or seconds
            diff = float((out - reference).abs().max())
            print(f"{name:28} {variant:16} {size / 1e6:10.2f} {1e3 * seconds:9.1f} {seconds / base:9.2f} {diff:10.1e}")
    acus = [n for n, m in model.named_modules() if isinstance(m, ActiveConv2d)]
    kernels = sorted({fused.get_submodule(n).kernel_size for n in acus})
    print(f"{'':28} {len(acus)} ACUs fused into convs of kernel sizes {kernels} (the positions' spread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=DEFAULT)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    images, _ = load_split(DEBIAN_ROOT, "test")
    transform = grey_transform(28, 1, False, 28, "pad", MEAN, STD)
    x = torch.stack([transform(image) for image in images[: args.batch]])
    print(f"batch {args.batch} Fashion-MNIST test images, {args.threads} thread(s), median of {args.reps}")
    print(f"{'model':28} {'variant':16} {'weights MB':>10} {'ms/batch':>9} {'x unfused':>9} {'max |diff|':>10}")
    for name in args.models:
        bench_one(name, x, args.reps, ort, options)


if __name__ == "__main__":
    main()
