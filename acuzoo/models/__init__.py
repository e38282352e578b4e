"""The model zoo: importing this package registers every family with timm.

``list_models`` lists the zoo (whatever module of this package registered the model, so a new
family appears once it is imported here); ``zoo_aliases`` its short names (timm's deprecation
aliases: they build their target and are not listed); ``is_zoo_model`` tells a zoo name from
another; ``resolve_model_name`` turns a user's name into a registered one or raises with the
closest valid names.

Building a model with its published weights needs only what is here (``_builder``,
``_manifest``, ``_pretrained``): this package imports nothing from ``acuzoo.hub`` or
``acuzoo.lit``, which import it.
"""

from __future__ import annotations

import difflib
import fnmatch

from timm.layers import register_notrace_module
from timm.models import get_deprecated_models, model_entrypoint
from timm.models import list_models as timm_list_models

from ..nn import ActiveConv2d
from . import cifar_resnet, cifar_resnext, inception_bn, mobilenetv2, xception  # noqa: F401

# torch.fx cannot trace the ACU's path choice; timm's FX feature extraction keeps it a leaf.
register_notrace_module(ActiveConv2d)

__all__ = ["is_zoo_model", "list_models", "resolve_model_name", "zoo_aliases"]


def _is_zoo_model(name: str) -> bool:
    return model_entrypoint(name).__module__.startswith(f"{__name__}.")


def list_models(filter: str | list[str] = "*", include_tags: bool = False) -> list[str]:
    """Sorted names of acuzoo's models matching the ``fnmatch`` pattern(s) ``filter``; with
    ``include_tags`` the pretrained tags too (``mobilenetv2_acu_100.in1k``). Aliases are not
    listed, as ``timm.list_models`` does not list timm's."""
    patterns = [filter] if isinstance(filter, str) else list(filter)
    names = [n for n in timm_list_models() if _is_zoo_model(n)]
    if include_tags:
        names = [t for t in timm_list_models(names, include_tags=True) if t.split(".")[0] in names]
    # A tagged name matches when it or its untagged name does.
    return sorted(n for n in names if any(fnmatch.fnmatch(m, p) for p in patterns for m in (n, n.split(".")[0])))


def zoo_aliases() -> dict[str, str]:
    """Each short name of the zoo and the model it builds (``arch`` or ``arch.tag``)."""
    zoo = set(list_models())
    return {
        alias: target for alias, target in get_deprecated_models().items() if target and target.split(".")[0] in zoo
    }


def is_zoo_model(name: str) -> bool:
    """Whether ``name`` (with or without a tag) is one of acuzoo's models or aliases."""
    base = name.partition(".")[0]
    return base in list_models() or base in zoo_aliases()


def resolve_model_name(name: str) -> str:
    """``name`` if it is an acuzoo model (``family_variant`` or ``family_variant.tag``), an alias as
    the model it builds (``mobilenetv2_acu.fmnist`` -> ``mobilenetv2_acu_100.fmnist``), else a
    ValueError that names the closest valid choices (e.g. the widths that do exist)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty str, got {name!r}")
    base, _, tag = name.partition(".")
    aliases = zoo_aliases()
    if base in aliases:
        target, _, target_tag = aliases[base].partition(".")
        base, tag = target, tag or target_tag
        name = f"{base}.{tag}" if tag else base
    zoo = list_models()
    if base not in zoo:
        close = difflib.get_close_matches(base, [*zoo, *aliases], n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown acuzoo model {name!r}; {hint}valid models: {', '.join(zoo)}")
    if tag:
        tagged = list_models(base, include_tags=True)
        if name not in tagged:
            raise ValueError(f"model {base!r} has no tag {tag!r}; valid: {', '.join(tagged)}")
    return name
