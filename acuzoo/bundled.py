"""Where the files that ship with acuzoo are: the training configs and the published checkpoints.

In a source checkout they are the repository's top-level ``configs/`` and ``checkpoints/``. An
installed wheel carries them as package data under ``acuzoo/_data/`` (``setup.py`` maps them there
at build time), so ``pretrained=True`` and ``acuzoo fit --config quickstart`` work from any folder.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_INSTALLED = _PACKAGE / "_data"
_CHECKOUT = _PACKAGE.parent


def _bundled(name: str) -> Path:
    """``acuzoo/_data/<name>`` in an installed wheel, else the checkout's ``<name>/``."""
    installed = _INSTALLED / name
    return installed if installed.is_dir() else _CHECKOUT / name


def configs_dir() -> Path:
    """The folder of the bundled training configs (``*.yaml``)."""
    return _bundled("configs")


def checkpoints_dir() -> Path:
    """The folder of the published checkpoints (``manifest.json`` and its ``.safetensors`` files)."""
    return _bundled("checkpoints")


def bundled_configs() -> dict[str, Path]:
    """Every bundled config by name (the file name without ``.yaml``)."""
    folder = configs_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def config_purpose(path: Path) -> str:
    """A config's one-line purpose: the first sentence of its leading comment."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    return re.split(r"\.(?:\s|$)", text, maxsplit=1)[0].strip() or "(no description)"


def resolve_config(name_or_path: str) -> Path:
    """A config given as a path (used as it is when it exists) or a bundled name, with or
    without ``.yaml`` (``quickstart``, ``quickstart.yaml``, ``configs/quickstart.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    configs = bundled_configs()
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if stem in configs and (len(path.parts) == 1 or path.parent.name == "configs"):
        return configs[stem]
    if len(path.parts) > 1 and path.parent.name != "configs":
        raise FileNotFoundError(f"config file {path} does not exist")
    close = difflib.get_close_matches(stem, configs, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"config '{name_or_path}' is neither a file nor one of the {len(configs)} bundled configs "
        f"(acuzoo configs lists them){hint}"
    )
