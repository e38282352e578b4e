#!/usr/bin/env python
"""Does the ACU help? Train a conv/ACU pair with one recipe over several seeds, measure each run on
the 10,000 Fashion-MNIST test images as a timm user would, and report mean +- std per arm and a
95 % confidence interval of the difference.

    python bench/acu_vs_conv.py run --pair mobilenetv2 --seeds 1 2      # both arms, one after the other
    python bench/acu_vs_conv.py record --pair mobilenetv2 --arm acu --seed 0 --version DIR --wall-s S
    python bench/acu_vs_conv.py report                                  # table, CI, bench/acu_vs_conv.png

``run`` trains with ``train.py fit`` on the pair's published config (``checkpoints/configs/``), the
seed given to ``--seed_everything``, 2 threads and bench/ops.py's allocator settings, one run at a
time; the wall time covers the whole command (fit, per-epoch validation, the Lightning test). The
last weights are then loaded into ``timm.create_model("<model>.fmnist")`` (the tag's data config)
and measured by ``acuzoo.hub.evaluate.fmnist_test_accuracy``. ``record`` does the same for a run
made by hand (e.g. the published one, trained by ``checkpoints/train_all.sh``). Each run appends a
row to bench/acu_vs_conv.csv.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CSV = ROOT / "bench" / "acu_vs_conv.csv"
PNG = ROOT / "bench" / "acu_vs_conv.png"
RUNS = ROOT / "runs" / "acu_vs_conv"
COLUMNS = [
    "model", "arm", "seed", "epochs", "test_acc1", "wall_s", "commit",
    "lightning_test_acc1", "val_acc1", "steps", "threads", "config", "recipe",
]
# pair -> arm -> (model, config): the ACU and conv configs differ only in the model.
PAIRS = {
    "mobilenetv2": {
        "conv": ("mobilenetv2_conv_100", "checkpoints/configs/fmnist_mobilenetv2_conv_100.yaml"),
        "acu": ("mobilenetv2_acu_100", "checkpoints/configs/fmnist_mobilenetv2_acu_100.yaml"),
    },
    "resnet29": {
        "conv": ("cifar_resnet29_conv3", "checkpoints/configs/fmnist_resnet29_conv3.yaml"),
        "acu": ("cifar_resnet29_acu", "checkpoints/configs/fmnist_resnet29_acu.yaml"),
    },
}
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}  # bench/ops.py's glibc-keep
# Two-sided 95 % quantiles of Student's t by degrees of freedom; interpolated in 1/df between rows.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # The study's own outputs (a row appended by the previous run) do not make the code dirty.
    outputs = [f":!{p.relative_to(ROOT)}" for p in (CSV, PNG)]
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs], cwd=ROOT,
                           capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@functools.cache
def publisher() -> types.ModuleType:
    """checkpoints/publish.py (a script, not a package module), loaded once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish", ROOT / "checkpoints" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_label(config: str | Path) -> str:
    """What the pair's arms share, from a config (path relative to the repository or absolute) as
    checkpoints/publish.py describes it: length, input, augmentation, and a digest of the rest
    (optimizer, schedule, smoothing), so that runs of different recipes are never pooled."""
    import hashlib
    import json

    import yaml

    with open(ROOT / config) as f:
        described = publisher().recipe(yaml.safe_load(f))
    shared = {k: v for k, v in described.items() if k not in ("positions", "weights")}
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:6]
    return f"{shared['length']}, {shared['input']}, {shared['augmentation']} (#{digest})"


def logged_metrics(version: Path) -> dict[str, float]:
    """The last value of every metric in a Lightning run's metrics.csv, and ``epochs`` (training
    epochs logged) and ``steps`` (optimizer steps: the global step the final test logs)."""
    metrics: dict[str, float] = {}
    epochs = 0
    with open(version / "metrics.csv") as f:
        for row in csv.DictReader(f):
            metrics.update({k: float(v) for k, v in row.items() if v})
            if row.get("train/acc1"):
                epochs = max(epochs, int(row["epoch"]) + 1)
    return {**metrics, "epochs": epochs, "steps": metrics["step"]}


def measure(version: Path, model_name: str) -> float:
    """Timm-user test accuracy (%) of a run's last weights under the ``.fmnist`` tag's data config."""
    import timm
    import torch

    import acuzoo  # noqa: F401  (registers the zoo)
    from acuzoo.hub.evaluate import fmnist_test_accuracy
    from acuzoo.hub.lightning_ckpt import model_from_lightning_checkpoint

    trained, _ = model_from_lightning_checkpoint(version / "checkpoints" / "last.ckpt")
    model = timm.create_model(f"{model_name}.fmnist", num_classes=10, in_chans=1)
    model.load_state_dict(trained.state_dict())
    torch.set_num_threads(2)
    return fmnist_test_accuracy(model)


def lightning_figure(version: Path, metrics: dict[str, float]) -> float | str:
    """The run's own test accuracy (%), or "" where test_after_fit tested an earlier best checkpoint
    rather than the last weights that test_acc1 measures."""
    if publisher().lightning_test_checkpoint(version, int(metrics["steps"])) is not None:
        return ""
    return round(100 * metrics["test/acc1"], 2)


def record(pair: str, arm: str, seed: int, version: Path, wall_s: float, threads: int, sha: str) -> dict:
    model_name, config = PAIRS[pair][arm]
    metrics = logged_metrics(version)
    row = {
        "model": model_name, "arm": arm, "seed": seed, "epochs": int(metrics["epochs"]),
        "test_acc1": round(measure(version, model_name), 2), "wall_s": round(wall_s),
        "commit": sha, "lightning_test_acc1": lightning_figure(version, metrics),
        "val_acc1": round(100 * metrics["val/acc1"], 2), "steps": int(metrics["steps"]),
        # The run's own saved config (LightningCLI's, command-line overrides included) says its recipe.
        "threads": threads, "config": config,
        "recipe": recipe_label(version / "config.yaml" if (version / "config.yaml").is_file() else config),
    }
    new = not CSV.is_file()
    with open(CSV, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def train(pair: str, arm: str, seed: int, threads: int) -> tuple[Path, float]:
    """Run ``train.py fit`` for one arm and seed; (its version folder, wall seconds)."""
    model_name, config = PAIRS[pair][arm]
    run_name = f"{model_name}_seed{seed}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **ALLOCATOR)
    command = [sys.executable, "train.py", "fit", "--config", config, "--seed_everything", str(seed),
               "--run_name", run_name, "--trainer.default_root_dir", str(RUNS)]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    versions = sorted((RUNS / run_name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1], wall


def t975(df: float) -> float:
    rows = sorted(T975)
    if df >= rows[-1]:
        return 1.96
    low = max(r for r in rows if r <= max(df, 1))
    high = min(r for r in rows if r >= max(df, 1))
    if low == high:
        return T975[low]
    w = (1 / df - 1 / high) / (1 / low - 1 / high)
    return T975[high] + w * (T975[low] - T975[high])


def difference(acu: list[float], conv: list[float]) -> tuple[float, float, float]:
    """Mean of ACU - conv and its Welch 95 % interval."""
    d = statistics.mean(acu) - statistics.mean(conv)
    va, vc = statistics.variance(acu) / len(acu), statistics.variance(conv) / len(conv)
    se = math.sqrt(va + vc)
    if se == 0:
        return d, d, d
    df = (va + vc) ** 2 / (va**2 / (len(acu) - 1) + vc**2 / (len(conv) - 1))
    half = t975(df) * se
    return d, d - half, d + half


def verdict(low: float, high: float) -> str:
    """What a 95 % interval of ACU - conv says, in words."""
    if low > 0:
        return "the ACU is ahead (the interval excludes 0)"
    if high < 0:
        return "the conv is ahead (the interval excludes 0)"
    return "no difference shown at this many seeds (the interval includes 0)"


def grouped(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(pair, recipe) -> arm -> test accuracies: only runs of one recipe are compared."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for pair, arms in PAIRS.items():
        for arm, (model_name, _) in arms.items():
            for r in rows:
                if r["model"] == model_name and r["arm"] == arm:
                    groups.setdefault((pair, r["recipe"]), {}).setdefault(arm, []).append(float(r["test_acc1"]))
    return groups


def report() -> None:
    with open(CSV) as f:
        groups = grouped(list(csv.DictReader(f)))
    lines = []
    for (pair, recipe), arms in groups.items():
        lines.append(f"{pair}, {recipe}:")
        for arm, accs in sorted(arms.items(), key=lambda kv: kv[0] != "conv"):
            if len(accs) > 1:
                runs = ", ".join(f"{a:.2f}" for a in accs)
                spread = f"+- {statistics.stdev(accs):.2f} % over {len(accs)} seeds ({runs})"
            else:
                spread = "% (1 seed, no spread)"
            lines.append(f"  {arm}: {statistics.mean(accs):.2f} {spread}")
        if all(len(arms.get(a, [])) > 1 for a in ("acu", "conv")):
            d, low, high = difference(arms["acu"], arms["conv"])
            lines.append(f"  ACU - conv: {d:+.2f} points, 95 % CI [{low:+.2f}, {high:+.2f}] (Welch): "
                         f"{verdict(low, high)}")
    print("\n".join(lines))
    plot(groups)


def plot(groups: dict[tuple[str, str], dict[str, list[float]]]) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One y scale for all recipes, so that a recipe's effect and an arm's read alike.
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.0), squeeze=False, sharey=True)
    for ax, ((pair, recipe), arms) in zip(axes[0], groups.items()):
        for x, arm in enumerate(("conv", "acu")):
            accs = arms.get(arm, [])
            if not accs:
                continue
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            ax.scatter([x] * len(accs), accs, color="grey", s=14, zorder=3)
            ax.errorbar(x + 0.12, statistics.mean(accs), yerr=std, fmt="o", color="C0" if arm == "conv" else "C3",
                        capsize=5, zorder=4)
        title = f"{pair}: " + textwrap.shorten(recipe, 100)
        title = "\n".join(textwrap.wrap(title, 40))
        if all(len(arms.get(a, [])) > 1 for a in ("acu", "conv")):
            d, low, high = difference(arms["acu"], arms["conv"])
            title += f"\nACU - conv {d:+.2f} [{low:+.2f}, {high:+.2f}]"
        ax.set_title(title, fontsize=8)
        ax.set_xticks([0, 1], ["conv", "ACU"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylabel("Fashion-MNIST test top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("mean +- std over seeds (dots: runs); 95 % CI of the difference", fontsize=9)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train and record")
    run_p.add_argument("--pair", choices=PAIRS, required=True)
    run_p.add_argument("--arms", nargs="+", choices=("conv", "acu"), default=["conv", "acu"])
    run_p.add_argument("--seeds", nargs="+", type=int, required=True)
    run_p.add_argument("--threads", type=int, default=2)
    rec_p = sub.add_parser("record", help="record a finished run")
    rec_p.add_argument("--pair", choices=PAIRS, required=True)
    rec_p.add_argument("--arm", choices=("conv", "acu"), required=True)
    rec_p.add_argument("--seed", type=int, required=True)
    rec_p.add_argument("--version", type=Path, required=True, help="the run's version_N folder")
    rec_p.add_argument("--wall-s", type=float, required=True)
    rec_p.add_argument("--threads", type=int, default=2)
    rec_p.add_argument("--commit", default=None, help="default: this checkout's HEAD")
    sub.add_parser("report", help="print mean +- std and the CI; plot bench/acu_vs_conv.png")
    args = parser.parse_args()
    if args.command == "run":
        sha = commit()
        for seed in args.seeds:
            for arm in args.arms:
                version, wall = train(args.pair, arm, seed, args.threads)
                record(args.pair, arm, seed, version, wall, args.threads, sha)
    elif args.command == "record":
        record(args.pair, args.arm, args.seed, args.version, args.wall_s, args.threads, args.commit or commit())
    else:
        report()


if __name__ == "__main__":
    main()
