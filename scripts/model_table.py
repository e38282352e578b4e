"""Print the markdown table of every acuzoo model: parameters and MAdds, ours beside the paper's.

    .venv/bin/python scripts/model_table.py > table.md

Ours are measured at each model's default input size and class count (ImageNet 224 x 224 and
1000 classes, CIFAR 32 x 32 and 10), MAdds with acuzoo.profile's convention. The paper's
figures are read from the parity tests, which assert them, so the two never disagree.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import timm

import acuzoo
from acuzoo.profile import count_madds, count_params

TESTS = Path(__file__).resolve().parents[1] / "tests" / "models"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def paper_figures() -> dict[str, tuple[float | None, float | None, str]]:
    """model -> (paper params, paper MAdds, which tables), from the parity tests."""
    figures: dict[str, tuple[float | None, float | None, str]] = {}
    for row in _load(TESTS / "test_imagenet_paper_parity.py").ROWS:
        figures[row.model] = (row.params_m * 1e6, row.madds_m * 1e6, f"Table {row.table}")
    for model, params, where in _load(TESTS / "test_cifar_paper_parity.py").PAPER_PARAMS:
        table = where.split(",")[0]
        if model in figures:
            old = figures[model]
            if table not in old[2]:
                figures[model] = (old[0], old[1], f"{old[2]}, {table}")
        else:
            figures[model] = (params, None, table)
    figures["mobilenetv2_acu"] = figures["mobilenetv2_acu_100"]  # the same network
    return figures


def _delta(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours / paper - 1):+.1f}%"


def _millions(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value / 1e6:.{digits}f}M"


def table() -> str:
    figures = paper_figures()
    lines = [
        "| model | input | params | paper | Δ | MAdds | paper | Δ | paper's table |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in acuzoo.models.list_models():
        model = timm.create_model(name)
        size = model.default_cfg["input_size"]
        params, madds = count_params(model), count_madds(model, size)
        paper_params, paper_madds, where = figures.get(name, (None, None, ""))
        lines.append(
            f"| `{name}` | {size[-1]} | {_millions(params)} | {_millions(paper_params)} | "
            f"{_delta(params, paper_params)} | {_millions(madds, 1)} | {_millions(paper_madds, 0)} | "
            f"{_delta(madds, paper_madds)} | {where} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
