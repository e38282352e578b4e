"""Give ACU positions their own optimizer parameter group after the optimizer and its schedulers
exist, keeping every scheduler's per-group state in step (so any LightningModule can be used)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# Marks a group this module made, so that a second pass leaves it alone.
POSITIONS_KEY = "acu_positions"
# Group keys that hold a learning rate (torch's LRSchedulers, OneCycleLR, timm's schedulers).
_GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Scheduler attributes that hold one learning rate per group.
_SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs", "base_values")


def _children(scheduler: Any) -> list[Any]:
    # SequentialLR and ChainedScheduler drive the schedulers they hold.
    return list(getattr(scheduler, "_schedulers", []))


def _scale_scheduler_entry(scheduler: Any, index: int, mult: float) -> None:
    for attr in _SCHEDULER_LR_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) > index:
            values[index] = values[index] * mult
    for child in _children(scheduler):
        _scale_scheduler_entry(child, index, mult)


def _extend_scheduler(scheduler: Any, index: int, mult: float, old_len: int) -> None:
    for attr in _SCHEDULER_LR_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == old_len:
            values.append(values[index] * mult)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if isinstance(lambdas, list) and len(lambdas) == old_len:
        lambdas.append(lambdas[index])
    for child in _children(scheduler):
        _extend_scheduler(child, index, mult, old_len)


def _scaled(group: dict[str, Any], mult: float) -> dict[str, Any]:
    out = {k: v for k, v in group.items() if k != "params"}
    for key in _GROUP_LR_KEYS:
        if key in out and out[key] is not None:
            out[key] = out[key] * mult
    out["weight_decay"] = 0.0
    out[POSITIONS_KEY] = True
    return out


def isolate_positions(
    optimizer: torch.optim.Optimizer,
    positions: Iterable[torch.Tensor],
    lr_mult: float,
    schedulers: Iterable[Any] = (),
) -> int:
    """Put ``positions`` in groups of their own with lr = ``lr_mult`` x their old group's lr and no
    weight decay; momentum and other settings are copied. A group made only of positions is
    rescaled in place; a mixed group is split, the positions moving to a new group at the end.

    ``schedulers`` (those stepping ``optimizer``) get their per-group base lrs scaled or extended
    the same way, so the ratio holds at every schedule step. Returns the number of groups made.
    Call once the optimizer and schedulers exist and before any optimizer state is loaded.
    """
    ids = {id(p) for p in positions}
    schedulers = list(schedulers)
    made = 0
    for index, group in enumerate(list(optimizer.param_groups)):
        if group.get(POSITIONS_KEY):
            continue
        mine = [p for p in group["params"] if id(p) in ids]
        if not mine:
            continue
        if len(mine) == len(group["params"]):
            group.update(_scaled(group, lr_mult))
            for scheduler in schedulers:
                _scale_scheduler_entry(scheduler, index, lr_mult)
        else:
            old_len = len(optimizer.param_groups)
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            new = _scaled(group, lr_mult)
            new["name"] = f"{group.get('name', f'group{index}')}/positions"
            optimizer.add_param_group({**new, "params": mine})
            for scheduler in schedulers:
                _extend_scheduler(scheduler, index, lr_mult, old_len)
        made += 1
    for scheduler in schedulers:
        base = getattr(scheduler, "base_lrs", None)
        if isinstance(base, list) and len(base) != len(optimizer.param_groups):
            raise RuntimeError(
                f"{type(scheduler).__name__} keeps {len(base)} base lrs for {len(optimizer.param_groups)} "
                "param groups after splitting out ACU positions; give positions their own group in "
                "configure_optimizers instead"
            )
    return made
