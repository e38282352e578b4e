#!/usr/bin/env python
"""Publish the Fashion-MNIST checkpoints trained by ``checkpoints/train_all.sh``.

For each run: take the last Lightning checkpoint of its latest version under runs/fmnist/,
write ``checkpoints/<model>.fmnist.safetensors`` (``acuzoo convert --from-ckpt``), measure it as a
timm user would (``timm.create_model(name, pretrained=True)``, then timm's eval transform from
``resolve_data_config`` on each test image as a PIL grey image: ``acuzoo.hub.evaluate``) on all
10,000 test images and on the first 1,000 (which the tests re-measure), and record in
``checkpoints/manifest.json`` both, the Lightning run's own test and validation figures, the
recipe, the config, the wall time and the license.

    python checkpoints/publish.py [run ...] [--hardware side-by-side|"how they ran"]
    python checkpoints/publish.py --measure mobilenetv2_acu_100.fmnist   # re-measure, print
    python checkpoints/publish.py --remeasure cifar_resnet29_acu.fmnist  # re-measure into the manifest
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from safetensors import safe_open

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.hub.evaluate import fmnist_test_accuracy
from acuzoo.hub.lightning_ckpt import convert_lightning_checkpoint
from acuzoo.hub.manifest import read_manifest, sha256_file, write_entry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = {
    "resnet29_conv3": "cifar_resnet29_conv3",
    "resnet29_acu": "cifar_resnet29_acu",
    "mobilenetv2_conv_100": "mobilenetv2_conv_100",
    "mobilenetv2_acu_100": "mobilenetv2_acu_100",
}
TAG = "fmnist"
SUBSET = 1000
NATIVE_SIDE = 28  # Fashion-MNIST images are 28x28: a model of this input size sees them as they are
LICENSE = "MIT (these weights, as acuzoo; Fashion-MNIST is MIT-licensed too)"
HARDWARE = "CPU, 2 threads, one run at a time on a 2-core machine (glibc malloc with MALLOC_MMAP_MAX_=0)"
SIDE_BY_SIDE = (
    "CPU, 1 thread each, the pair's two runs side by side on a 2-core machine (glibc malloc with MALLOC_MMAP_MAX_=0)"
)


def dataset(side: int, val_size: int) -> str:
    fit = "as they are" if side == NATIVE_SIDE else f"resized to {side}x{side} (bilinear, as timm's eval transform)"
    return (
        "Fashion-MNIST (Xiao et al. 2017; Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist): "
        f"10 classes, 28x28 grey; trained on {60000 - val_size:,} of the 60,000 training images ({val_size} held out "
        f"for validation, seed 0), tested on the 10,000 test images; images {fit}, normalized with mean 0.2860, "
        "std 0.3530"
    )


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The training recipe a config sets, in a few fields."""
    model, data, trainer = config["model"], config["data"]["init_args"], config["trainer"]
    callbacks = trainer.get("callbacks") or []
    positions = [c["init_args"] for c in callbacks if c["class_path"].endswith("PositionLearningRate")]
    length = f"{trainer['max_epochs']} epochs" if trainer.get("max_epochs") else f"{trainer['max_steps']} steps"
    return {
        "length": length,
        "batch_size": data["batch_size"],
        "optimizer": f"SGD momentum {model['momentum']}{' Nesterov' if model.get('nesterov') else ''}, "
        f"lr {model['lr']}, weight decay {model['weight_decay']}"
        f"{' (none on norms and biases)' if model.get('no_weight_decay_norm_bias') else ''}",
        "schedule": f"{model['schedule']} by {model.get('schedule_interval', 'step')}"
        + (" (to 0)" if model["schedule"] == "linear" else ""),
        "label_smoothing": model.get("label_smoothing", 0.0),
        "input": input_handling(model.get("input_size", NATIVE_SIDE), data.get("fit", "pad")),
        "augmentation": augmentation(data),
        "positions": (f"lr x {positions[0].get('lr_mult', 0.01)}, normalized gradient" if positions else "n/a"),
        "weights": "the last step's",
    }


def input_handling(side: int, fit: str) -> str:
    """How the 28x28 images become the model's input, in words (``fit`` only acts on a larger input)."""
    return f"{side} px, as they are" if side == NATIVE_SIDE else f"{side} px, {fit}"


def augmentation(data: dict[str, Any]) -> str:
    """The training split's augmentation, in words, from the data module's arguments."""
    if not data.get("augment", True):
        return "none"
    padding = data.get("crop_padding", 4)
    return f"random crop (pad {padding}) + horizontal flip" if padding else "horizontal flip"


def timm_user_metrics(name: str) -> dict[str, Any]:
    """Accuracy of the published ``name`` loaded through timm, on all test images and the first SUBSET."""
    model = timm.create_model(name, pretrained=True)
    return {
        "test_acc1": round(fmnist_test_accuracy(model), 2),
        "test_images": 10000,
        "subset_acc1": round(fmnist_test_accuracy(model, SUBSET), 2),
        "subset": f"plain top-1 accuracy on the first {SUBSET} test images, in file order (t10k-images-idx3-ubyte)",
        "how": "timm.create_model(name, pretrained=True); timm.data.create_transform(**resolve_data_config(model=m)) "
        "on each test image as a PIL grey image (acuzoo.hub.evaluate.fmnist_test_accuracy)",
    }


def run_results(run: str) -> tuple[Path, dict[str, float], Path]:
    """(last checkpoint, final logged metrics, version folder) of a run's latest finished version."""
    versions = sorted((ROOT / "runs" / "fmnist" / f"fmnist_{run}").glob("version_*"), key=lambda p: int(p.name[8:]))
    for version in reversed(versions):
        last = version / "checkpoints" / "last.ckpt"
        if last.is_file():
            metrics: dict[str, float] = {"epochs": 0}
            with open(version / "metrics.csv") as f:
                for row in csv.DictReader(f):
                    metrics.update({k: float(v) for k, v in row.items() if v})
                    if row.get("train/acc1"):
                        metrics["epochs"] = max(metrics["epochs"], int(row["epoch"]) + 1)
            if "test/acc1" in metrics:
                return last, metrics, version
    raise FileNotFoundError(f"no finished run fmnist_{run} under runs/fmnist (run checkpoints/train_all.sh {run})")


def lightning_test_checkpoint(version: Path, steps: int) -> str | None:
    """The checkpoint ``test_after_fit`` tested when it is not the last step's weights (it tests the
    best by val/acc1), else None: only then does the run's own test figure describe the last weights."""
    best = sorted(version.glob("checkpoints/best-*.ckpt"))
    found = re.search(r"step(\d+)", best[-1].name) if best else None
    return None if found is None or int(found[1]) == steps else best[-1].name


def lightning_test(version: Path, metrics: dict[str, float]) -> dict[str, Any]:
    """The run's own test figure, when it measured the weights being published."""
    other = lightning_test_checkpoint(version, int(metrics["step"]))
    if other is not None:
        return {"lightning_note": f"the run's own test measured {other} (best by val/acc1), not the published "
                "last weights: no Lightning figure for these"}
    return {
        "lightning_test_acc1": round(100 * metrics["test/acc1"], 2),
        "lightning_note": "the Lightning run's test (class-averaged accuracy, equal to plain accuracy on this "
        "balanced split) through the training pipeline's own transform",
    }


def check_trained_as_committed(saved: dict[str, Any], committed: dict[str, Any], version: Path) -> None:
    """Refuse a run whose own saved config (command-line overrides included) trained another model
    or recipe than the committed config that the manifest will name."""
    expected = recipe(committed)
    differences = [
        f"{key}: run {value!r}, committed {expected.get(key)!r}"
        for key, value in recipe(saved).items()
        if value != expected.get(key)
    ]
    trained, named = saved["model"]["model_name"], committed["model"]["model_name"]
    if trained != named:
        differences.insert(0, f"model: run {trained!r}, committed {named!r}")
    if differences:
        raise ValueError(f"{version} was not trained with the committed config: " + "; ".join(differences))


def keep_if_unchanged(out: Path, entry: dict) -> dict:
    """Move the new file into place unless ``out`` already holds the same tensors and metadata
    (safetensors orders metadata arbitrarily, so bytes and sha256 would change for nothing)."""
    new = out.with_suffix(".new")
    if out.is_file():
        with safe_open(str(out), "pt") as old_f, safe_open(str(new), "pt") as new_f:
            same = old_f.metadata() == new_f.metadata() and set(old_f.keys()) == set(new_f.keys())
            same = same and all(torch.equal(old_f.get_tensor(k), new_f.get_tensor(k)) for k in old_f.keys())  # noqa: SIM118
        if same:
            new.unlink()
            return {**entry, "file": out.name, "sha256": sha256_file(out), "bytes": out.stat().st_size}
    new.replace(out)
    return {**entry, "file": out.name}


def wall_time(run: str) -> int | None:
    """The last recorded wall time (s) of a run: fit, validation and the full test."""
    path = ROOT / "runs" / "fmnist_wall_times.txt"
    times = [line.split() for line in path.read_text().splitlines()] if path.is_file() else []
    found = [int(t) for name, t in times if name == f"fmnist_{run}"]
    return found[-1] if found else None


def publish(run: str, hardware: str = HARDWARE) -> dict:
    model_name = RUNS[run]
    name = f"{model_name}.{TAG}"
    ckpt, metrics, version = run_results(run)
    out = HERE / f"{name}.safetensors"
    entry = convert_lightning_checkpoint(ckpt, out.with_suffix(".new"), TAG)
    entry = keep_if_unchanged(out, entry)
    write_entry(entry, HERE)  # the file's sha first: create_pretrained checks it
    config_path = f"checkpoints/configs/fmnist_{run}.yaml"
    config = yaml.safe_load((ROOT / config_path).read_text())
    check_trained_as_committed(yaml.safe_load((version / "config.yaml").read_text()), config, version)
    side = config["model"].get("input_size", NATIVE_SIDE)
    entry.update(
        model=model_name,
        tag=TAG,
        dtype="float32",
        dataset=dataset(side, config["data"]["init_args"]["val_size"]),
        metrics={
            **timm_user_metrics(name),
            **lightning_test(version, metrics),
            "val_acc1": round(100 * metrics["val/acc1"], 2),
        },
        measure={
            "test": f"python checkpoints/publish.py --measure {name}",
            "lightning_test": f"python train.py test --config {config_path} --model.model_name {name} "
            "--model.pretrained true",
            "test_suite": "pytest tests/hub/test_published.py",
        },
        train={
            "config": config_path,
            "command": f"bash checkpoints/train_all.sh {run}",
            "recipe": recipe(config),
            "epochs": int(metrics["epochs"]),
            "steps": int(metrics["step"]),  # the global step the final test logs
            "wall_time_s": wall_time(run),
            "hardware": hardware,
        },
        license=LICENSE,
    )
    entry["source"] = str(ckpt.relative_to(ROOT))
    write_entry(entry, HERE)
    return entry


def remeasure(name: str) -> dict:
    """Replace the timm-user figures of a published entry by a fresh measurement (weights unchanged)."""
    published = read_manifest(HERE)[name]
    entry = {"name": published.name, "file": published.file, "sha256": published.sha256, **published.info}
    old = entry["metrics"]
    fresh = timm_user_metrics(name)
    kept = {k: v for k, v in old.items() if k not in fresh and k not in ("note",)}
    if "lightning_test_acc1" not in kept and "note" in old:  # entries from before the timm-user figures
        kept["lightning_test_acc1"] = old["test_acc1"]
        kept["lightning_note"] = old["note"]
    entry["metrics"] = {**fresh, **kept}
    if entry["measure"]["test"].startswith("python train.py test"):
        entry["measure"] = {**entry["measure"], "lightning_test": entry["measure"]["test"],
                            "test": f"python checkpoints/publish.py --measure {name}"}
        entry["measure"].pop("subset", None)
    config = yaml.safe_load((ROOT / entry["train"]["config"]).read_text())
    entry["train"] = {**entry["train"], "recipe": recipe(config)}
    write_entry(entry, HERE)
    return entry


def write_readme() -> None:
    """checkpoints/README.md: the manifest as a table, and how to use and reproduce it."""
    entries = read_manifest(HERE)
    rows = [
        f"| `{e.name}` | {e.info['input_size'][1]}x{e.info['input_size'][2]}, {e.info['in_chans']} channel | "
        f"{e.info['metrics']['test_acc1']:.2f} | {e.info['metrics']['subset_acc1']:.2f} | {e.info['train']['steps']} | "
        f"{e.info['train']['wall_time_s']} | {e.info['bytes'] / 1e6:.1f} | `{e.sha256[:12]}` |"
        for e in entries.values()
    ]
    (HERE / "README.md").write_text(
        "# Published checkpoints\n\n"
        "Generated by `python checkpoints/publish.py` from `manifest.json` (the authority: sha256, dataset, "
        "recipe, commands, config, wall time, license per entry). Trained here on Fashion-MNIST on 2 CPU cores "
        "with `checkpoints/train_all.sh` (configs in `checkpoints/configs/`). The accuracies are a timm user's: "
        "`timm.create_model(name, pretrained=True)` and timm's eval transform (`resolve_data_config`) on each test "
        "image as a PIL grey image.\n\n"
        "| checkpoint | input | test acc. % (10,000) | first 1,000 % | steps | train wall s | MB | sha256 |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Load: `timm.create_model(\"mobilenetv2_acu_100.fmnist\", pretrained=True)` (after `import acuzoo`); "
        "another folder: `ACUZOO_CHECKPOINTS=/path` or `checkpoint_dir=\"/path\"`.\n"
        "Measure: `python checkpoints/publish.py --measure <name>` (all 10,000 and the first 1,000, timm's way); "
        "`pytest tests/hub/test_published.py` re-measures the first 1,000 test images.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--measure", nargs="+", metavar="MODEL.TAG", help="measure published checkpoints, print")
    action.add_argument("--remeasure", nargs="+", metavar="MODEL.TAG",
                        help="measure published checkpoints again into the manifest (weights unchanged)")
    parser.add_argument("runs", nargs="*", metavar="run",
                        help=f"runs to publish, of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--hardware", default=HARDWARE,
                        help="how the runs ran, for the manifest; 'side-by-side' for the pair's two runs at once")
    args = parser.parse_args(argv)
    unknown = [run for run in args.runs if run not in RUNS]
    if unknown:
        parser.error(f"unknown run {', '.join(unknown)}: expected some of {', '.join(RUNS)}")
    if (args.measure or args.remeasure) and args.runs:
        parser.error("--measure/--remeasure take checkpoint names, not runs")
    args.hardware = {"side-by-side": SIDE_BY_SIDE}.get(args.hardware, args.hardware)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        for name in args.measure:
            model = timm.create_model(name, pretrained=True)
            print(f"{name}: {fmnist_test_accuracy(model):.2f}% on the 10,000 test images, "
                  f"{fmnist_test_accuracy(model, SUBSET):.2f}% on the first {SUBSET} (timm's eval transform)")
        return
    if args.remeasure:
        for name in args.remeasure:
            m = remeasure(name)["metrics"]
            print(f"{name}: test {m['test_acc1']}%, first {SUBSET}: {m['subset_acc1']}%")
        write_readme()
        return
    torch.set_num_threads(2)
    for run in args.runs or RUNS:
        e = publish(run, args.hardware)
        print(f"{e['name']}: test {e['metrics']['test_acc1']}%, first {SUBSET}: {e['metrics']['subset_acc1']}%, "
              f"{e['bytes'] / 1e6:.1f} MB, sha256 {e['sha256'][:12]}")
    write_readme()


if __name__ == "__main__":
    main()
