#!/usr/bin/env python
"""Publish the Fashion-MNIST checkpoints trained by ``checkpoints/train_all.sh``.

For each run: take the best Lightning checkpoint of its latest version under runs/fmnist/,
write ``checkpoints/<model>.fmnist.safetensors`` (``acuzoo convert --from-ckpt``), measure its
accuracy on the subset the tests re-measure (the first 1,000 test images) and record, in
``checkpoints/manifest.json``, the test accuracy on all 10,000 test images that the run measured
(``test_after_fit``), with the commands that measure both, the config, the wall time and the license.

    python checkpoints/publish.py [run ...]
    python checkpoints/publish.py --measure cifar_resnet29_acu.fmnist   # re-measure the first 1,000

The Lightning test logs torchmetrics' class-averaged accuracy; on the test split (1,000 images per
class) that equals plain accuracy, but on the unbalanced first 1,000 it does not, so the subset
figure is plain accuracy measured here (and by tests/hub/test_published.py).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from safetensors import safe_open

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.hub.lightning_ckpt import convert_lightning_checkpoint
from acuzoo.hub.manifest import read_manifest, sha256_file, write_entry
from acuzoo.hub.pretrained import create_pretrained
from acuzoo.lit.data.fashion_mnist import DEBIAN_ROOT, MEAN, STD, grey_transform, load_split

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
DATASET = (
    "Fashion-MNIST (Xiao et al. 2017; Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist): "
    "10 classes, 28x28 grey; trained on 59,500 of the 60,000 training images (500 held out for validation, "
    "seed 0), tested on the 10,000 test images; input normalized with mean 0.2860, std 0.3530, no padding"
)
LICENSE = "MIT (these weights, as acuzoo; Fashion-MNIST is MIT-licensed too)"


def subset_accuracy(model: torch.nn.Module, count: int = SUBSET) -> float:
    """Top-1 accuracy (%) on the first ``count`` Fashion-MNIST test images."""
    images, labels = load_split(DEBIAN_ROOT, "test")
    transform = grey_transform(28, 1, False, 28, "pad", MEAN, STD)
    x = torch.stack([transform(image) for image in images[:count]])
    with torch.no_grad():
        predicted = torch.cat([model.eval()(batch).argmax(1) for batch in x.split(250)])
    return round(100 * (predicted == labels[:count]).float().mean().item(), 2)


def run_results(run: str) -> tuple[Path, dict[str, float], Path]:
    """(best checkpoint, final logged metrics, version folder) of a run's latest version."""
    versions = sorted((ROOT / "runs" / "fmnist" / f"fmnist_{run}").glob("version_*"), key=lambda p: int(p.name[8:]))
    for version in reversed(versions):
        best = sorted(version.glob("checkpoints/best-*.ckpt"))
        if best:
            metrics: dict[str, float] = {}
            with open(version / "metrics.csv") as f:
                for row in csv.DictReader(f):
                    metrics.update({k: float(v) for k, v in row.items() if v})
            return best[-1], metrics, version
    raise FileNotFoundError(f"no finished run fmnist_{run} under runs/fmnist (run checkpoints/train_all.sh {run})")


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


def publish(run: str) -> dict:
    model_name = RUNS[run]
    ckpt, metrics, version = run_results(run)
    out = HERE / f"{model_name}.{TAG}.safetensors"
    entry = convert_lightning_checkpoint(ckpt, out.with_suffix(".new"), TAG)
    entry = keep_if_unchanged(out, entry)
    write_entry(entry, HERE)  # the file's sha first: create_pretrained checks it
    model = create_pretrained(model_name, file=out)
    config = f"checkpoints/configs/fmnist_{run}.yaml"
    measure = f"python train.py test --config {config} --model.model_name {model_name}.{TAG} --model.pretrained true"
    hparams = (version / "hparams.yaml").read_text()
    steps = int(metrics["step"])
    entry.update(
        model=model_name,
        tag=TAG,
        dtype="float32",
        dataset=DATASET,
        metrics={
            "test_acc1": round(100 * metrics["test/acc1"], 2),
            "test_images": 10000,
            "subset_acc1": subset_accuracy(model),
            "subset": f"plain top-1 accuracy on the first {SUBSET} test images, in file order (t10k-images-idx3-ubyte)",
            "note": "test_acc1: the Lightning test's class-averaged accuracy, equal to plain accuracy on this "
            "balanced split (1,000 test images per class)",
            "val_acc1": round(100 * metrics["val/acc1"], 2),
        },
        measure={
            "test": measure,
            "subset": f"python checkpoints/publish.py --measure {model_name}.{TAG}",
            "test_suite": "pytest tests/hub/test_published.py",
        },
        train={
            "config": config,
            "command": f"OMP_NUM_THREADS=1 bash checkpoints/train_all.sh {run}",
            "steps": steps,
            "wall_time_s": wall_time(run),
            "hardware": "CPU, 1 thread (2 cores shared with other jobs)",
            "hparams": hparams.strip().splitlines()[0] if hparams else "",
        },
        license=LICENSE,
    )
    entry["source"] = str(ckpt.relative_to(ROOT))
    entry.pop("hparams", None)
    entry["train"].pop("hparams")
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
        "commands, config, license per entry). Trained here on Fashion-MNIST with `checkpoints/train_all.sh` "
        "(configs in `checkpoints/configs/`), a short CPU budget: these are working weights for trying, "
        "fine-tuning and exporting the zoo, not paper results.\n\n"
        "| checkpoint | input | test acc. % (10,000) | first 1,000 % | steps | train wall s | MB | sha256 |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Load: `timm.create_model(\"cifar_resnet29_acu.fmnist\", pretrained=True)` (after `import acuzoo`); "
        "another folder: `ACUZOO_CHECKPOINTS=/path` or `checkpoint_dir=\"/path\"`.\n"
        "Measure: the `measure` commands of each entry (`python train.py test ...`); "
        "`pytest tests/hub/test_published.py` re-measures the first 1,000 test images.\n"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        import timm

        for name in sys.argv[2:]:
            print(f"{name}: {subset_accuracy(timm.create_model(name, pretrained=True))}% on the first {SUBSET}")
        sys.exit()
    for run in sys.argv[1:] or RUNS:
        e = publish(run)
        print(f"{e['name']}: test {e['metrics']['test_acc1']}%, first {SUBSET}: {e['metrics']['subset_acc1']}%, "
              f"{e['bytes'] / 1e6:.1f} MB, sha256 {e['sha256'][:12]}")
    write_readme()
