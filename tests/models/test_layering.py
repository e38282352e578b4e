"""The layering of DESIGN.md: an import arrow only points down. ``models`` (and ``nn`` and ``ops``
below it) never import ``hub`` or ``lit``; building a model with its published weights needs
nothing above ``models``; ``hub`` keeps its public names by importing them from ``models``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import acuzoo

PACKAGE = Path(acuzoo.__file__).resolve().parent
LOWER_LAYERS = ("models", "nn", "ops")
UPPER_LAYERS = ("acuzoo.hub", "acuzoo.lit", "acuzoo.cli")
HEAVY = ("pytorch_lightning", "lightning")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the code of ``module``) imports, by absolute name: relative
    imports resolved, and ``from package import name`` counted as a possible ``package.name``."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def file_imports(path: Path) -> set[str]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def lower_layer_files() -> list[Path]:
    return sorted(p for layer in LOWER_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def reaches_up(module: str) -> bool:
    return any(module == up or module.startswith(f"{up}.") for up in UPPER_LAYERS)


def test_the_check_sees_upward_imports_however_they_are_written():
    source = "from ..hub.pretrained import build_zoo_model\nfrom .. import lit\nimport acuzoo.cli\n"
    found = imported_modules(source, "acuzoo.models.some_family")
    assert {"acuzoo.hub.pretrained", "acuzoo.lit", "acuzoo.cli"} <= found
    assert not any(reaches_up(m) for m in imported_modules("from ._builder import x\n", "acuzoo.models.f"))


@pytest.mark.parametrize("path", lower_layer_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_never_import_hub_lit_or_the_cli(path: Path):
    upward = sorted(m for m in file_imports(path) if reaches_up(m))
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {upward} (DESIGN.md: arrows point down)"


def test_importing_the_models_loads_neither_hub_nor_lit_nor_lightning():
    code = (
        "import sys, acuzoo.models\n"
        f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or any(m == u or m.startswith(u + '.') for u in {UPPER_LAYERS!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_building_with_published_weights_loads_neither_hub_nor_lit():
    code = (
        "import sys, timm, acuzoo\n"
        "timm.create_model('cifar_resnet29_acu.fmnist', pretrained=True)\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('acuzoo.hub', 'acuzoo.lit'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_the_hub_keeps_its_public_names_from_the_models():
    import acuzoo.hub
    import acuzoo.hub.manifest
    import acuzoo.hub.pretrained
    from acuzoo.models import _builder, _manifest

    for name in ("build_zoo_model", "load_zoo_pretrained", "read_checkpoint_metadata"):
        assert getattr(acuzoo.hub, name) is getattr(_builder, name)
        assert getattr(acuzoo.hub.pretrained, name) is getattr(_builder, name)
    assert acuzoo.hub.pretrained.create_pretrained is _builder.create_pretrained
    for name in ("ENV_VAR", "CheckpointError", "checkpoint_dir", "find_entry", "read_manifest", "sha256_file"):
        assert getattr(acuzoo.hub, name) is getattr(_manifest, name)
        assert getattr(acuzoo.hub.manifest, name) is getattr(_manifest, name)
