"""The conftest (loaded as a pytest plugin, ``-p timm_suite_plugin``) that runs timm's own
``tests/test_models.py`` on acuzoo's models.

timm's file parametrizes its tests at import time with ``timm.list_models(...)``; this plugin
imports acuzoo (registering the zoo) and replaces ``timm.list_models`` by a version that keeps
only acuzoo's models, so every parametrized test is about our models. The ``module=`` filter
(timm's list of modules that implement ``forward_intermediates``) admits every zoo model: they
all implement it. Tests with hard-coded timm model names are deselected.

Selection rule (keeps the run within a few minutes on 2 CPU cores):

* every zoo model runs the cheap tests: ``test_model_default_cfgs`` (config, API contract,
  head and pool shapes, on the meta device), ``test_model_forward_features``,
  ``test_model_forward_intermediates`` and ``test_model_forward_intermediates_features``
  (96 px inputs);
* one ACU representative per family (per model file: the first of its models, in sorted
  order, whose name contains "acu") also runs the expensive ones: ``test_model_forward``
  (default input size), ``test_model_backward``, and the TorchScript and FX tests;
* the family's first model without "acu" (its conv representative) runs the two TorchScript
  tests, which the ACU models cannot pass yet (below), so the family's code is scripted, and
  ``test_prune_intermediate_layers_contract`` (prunes at every tap, with backward: the
  slowest test; its code is shared by a family's conv and ACU models);
* ``ACUZOO_TIMM_SUITE_FULL=1`` runs every test on every model.

Known ACU-layer limits become strict xfails, decided by probing the layer, not by name lists:
if ``ActiveConv2d`` cannot run on the meta device and in bfloat16 (what
``test_model_default_cfgs`` does), or cannot be compiled by ``torch.jit.script``, the tests
that need it are expected to fail on models with ACUs (names containing "acu"), with the
probe's error as the reason. Once the layer supports it, the probe passes and the tests run
as usual; the xfails are strict, so a test that passes despite a failing probe is reported.
"""

from __future__ import annotations

import os
import re

import pytest
import timm
import torch

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.models import list_models as zoo_models
from acuzoo.nn import ActiveConv2d

CONV_REP_TESTS = frozenset(
    {
        "test_model_forward_torchscript",
        "test_model_forward_fx_torchscript",
        "test_prune_intermediate_layers_contract",
    }
)
CHEAP_TESTS = frozenset(
    {
        "test_model_default_cfgs",
        "test_model_forward_features",
        "test_model_forward_intermediates",
        "test_model_forward_intermediates_features",
    }
)
FULL = os.environ.get("ACUZOO_TIMM_SUITE_FULL") == "1"
ZOO = frozenset(zoo_models())
ZOO_TAGGED = frozenset(zoo_models(include_tags=True))

_timm_list_models = timm.list_models


def _zoo_list_models(filter="", module="", *args, **kwargs) -> list[str]:
    # Every zoo model implements forward_intermediates, so timm's module filter admits it.
    names = _timm_list_models(filter, "", *args, **kwargs)
    return [name for name in names if name in ZOO or name in ZOO_TAGGED]


timm.list_models = _zoo_list_models


def representatives(acu: bool) -> set[str]:
    """Of each model file of the zoo, the first model whose name has (or lacks) 'acu'."""
    chosen: dict[str, str] = {}
    for name in sorted(ZOO):
        family = timm.models.model_entrypoint(name).__module__
        if ("acu" in name) == acu and family not in chosen:
            chosen[family] = name
    return set(chosen.values())


def _probe_meta_bf16() -> str | None:
    try:
        layer = ActiveConv2d(4, 4, 3, groups=4, device="meta")
        layer(torch.randn(1, 4, 5, 5, device="meta"))
        layer.to(torch.bfloat16)(torch.randn(1, 4, 5, 5, device="meta", dtype=torch.bfloat16))
    except Exception as err:  # the probe reports any failure as the reason
        return f"ActiveConv2d fails on the meta device or in bfloat16: {type(err).__name__}: {err}"
    return None


def _probe_script() -> str | None:
    try:
        torch.jit.script(ActiveConv2d(4, 4, 3, groups=4))
    except Exception as err:
        return f"ActiveConv2d cannot be scripted: {type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def acu_limits() -> dict[str, str]:
    """test name -> why it cannot pass on a model with ACUs (empty once the layer can)."""
    limits = {}
    meta = _probe_meta_bf16()
    if meta:
        limits["test_model_default_cfgs"] = meta
    script = _probe_script()
    if script:
        limits["test_model_forward_torchscript"] = script
        limits["test_model_forward_fx_torchscript"] = script
    return limits


def is_selected(test: str, model_name: object, acu_reps: set[str], conv_reps: set[str]) -> bool:
    if not isinstance(model_name, str) or model_name.split(".")[0] not in ZOO:
        return False
    base = model_name.split(".")[0]
    if FULL or test in CHEAP_TESTS:
        return True
    if test in CONV_REP_TESTS and base in conv_reps:
        return True
    return base in acu_reps and test != "test_prune_intermediate_layers_contract"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    acu_reps, conv_reps = representatives(acu=True), representatives(acu=False)
    limits = acu_limits()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        test = re.sub(r"\[.*", "", item.name)
        model_name = params.get("model_name")
        if not is_selected(test, model_name, acu_reps, conv_reps):
            drop.append(item)
            continue
        if test in limits and "acu" in model_name:
            item.add_marker(pytest.mark.xfail(strict=True, reason=limits[test]))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
