#!/usr/bin/env python
"""What the ACUs learned: how far the synapses of each ACU layer moved from their grid, for the
published ACU checkpoints (or any timm names or acuzoo safetensors files given).

    python bench/acu_positions.py                         # the published .fmnist ACU models
    python bench/acu_positions.py mobilenetv2_acu_100.fmnist path/to/model.safetensors

Per layer (``acuzoo.nn.displacement_by_layer``): the mean distance of the movable synapses from
their grid place and the fraction more than 0.5 px away. Writes bench/acu_positions.png (one
panel per model, layers in network order) and bench/acu_positions.csv, and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUBLISHED_ACU = ["mobilenetv2_acu_100.fmnist", "cifar_resnet29_acu.fmnist"]
PNG = ROOT / "bench" / "acu_positions.png"
CSV = ROOT / "bench" / "acu_positions.csv"


def load(name: str):
    import timm

    import acuzoo  # noqa: F401  (registers the zoo)

    if name.endswith(".safetensors"):
        from acuzoo.hub import read_checkpoint_metadata
        from acuzoo.models._builder import create_pretrained

        metadata, _ = read_checkpoint_metadata(name)
        return create_pretrained(metadata["architecture"], file=name)
    return timm.create_model(name, pretrained=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=PUBLISHED_ACU)
    parser.add_argument("--threshold", type=float, default=0.5, help="px")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from acuzoo.nn import displacement_by_layer

    results = {name: displacement_by_layer(load(name), args.threshold) for name in args.models}
    with open(CSV, "w", newline="") as f:
        writer = None
        for name, layers in results.items():
            for i, layer in enumerate(layers):
                row = {"model": name, "layer": i, **layer.as_row()}
                writer = writer or csv.DictWriter(f, list(row))
                if f.tell() == 0:
                    writer.writeheader()
                writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.9 * len(results)), squeeze=False)
    for ax, (name, layers) in zip(axes[:, 0], results.items()):
        x = range(len(layers))
        ax.bar(x, [layer.mean_px for layer in layers], color="C0", label="mean |displacement| (px)")
        ax.set_ylabel("px", color="C0")
        ax.set_xlabel("ACU layer, input to output")
        right = ax.twinx()
        right.plot(x, [100 * layer.beyond_threshold for layer in layers], "o-", color="C3", ms=3,
                   label=f"synapses > {args.threshold:g} px (%)")
        right.set_ylabel(f"> {args.threshold:g} px (%)", color="C3")
        right.set_ylim(0, 100)
        moved = sum(layer.mean_px * layer.position_sets * layer.synapses for layer in layers)
        total = sum(layer.position_sets * layer.synapses for layer in layers)
        ax.set_title(f"{name}: {len(layers)} ACU layers, mean {moved / total:.3f} px over all synapses", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right", framealpha=0.9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        print(f"{name}: {len(layers)} ACU layers; mean |displacement| {moved / total:.3f} px; per layer "
              f"{min(layer.mean_px for layer in layers):.3f}-{max(layer.mean_px for layer in layers):.3f} px; "
              f"> {args.threshold:g} px: {min(layer.beyond_threshold for layer in layers):.1%}-"
              f"{max(layer.beyond_threshold for layer in layers):.1%} of a layer's synapses; "
              f"largest {max(layer.max_px for layer in layers):.2f} px")
    fig.tight_layout()
    fig.savefig(PNG, dpi=100)
    print(f"wrote {PNG.relative_to(ROOT)} and {CSV.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
