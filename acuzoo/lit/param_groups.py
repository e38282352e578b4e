"""Give ACU positions their own optimizer parameter group after the optimizer and its schedulers
exist, keeping every scheduler's per-group state in step (so any LightningModule can be used)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

# Marks a group this module made, so that a second pass leaves it alone.
POSITIONS_KEY = "acu_positions"
# In a positions group: the index of the weights' group whose lr it follows.
FOLLOWS_KEY = "acu_positions_follow"
# Group keys that hold a learning rate (torch's LRSchedulers, OneCycleLR, timm's schedulers).
_GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Scheduler attributes that hold one learning rate per group.
_SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs", "base_values")
# Scheduler attributes that hold one other value per group, copied for a new group (LambdaLR's and
# MultiplicativeLR's factors, CyclicLR's momentum bounds).
_SCHEDULER_COPIED_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")


@dataclass(frozen=True)
class PositionGroup:
    """A param group of ACU positions (``index``) and the weights' group whose lr it follows
    (``follows``; None when the optimizer holds no other group)."""

    index: int
    follows: int | None


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
    for attr in _SCHEDULER_LR_LISTS + _SCHEDULER_COPIED_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == old_len:
            values.append(values[index] * mult if attr in _SCHEDULER_LR_LISTS else values[index])
    for child in _children(scheduler):
        _extend_scheduler(child, index, mult, old_len)


def _scaled(group: dict[str, Any], mult: float, follows: int | None) -> dict[str, Any]:
    out = {k: v for k, v in group.items() if k != "params"}
    for key in _GROUP_LR_KEYS:
        if key in out and out[key] is not None:
            out[key] = out[key] * mult
    out["weight_decay"] = 0.0
    out[POSITIONS_KEY] = True
    out[FOLLOWS_KEY] = follows
    return out


def _first_group_without(optimizer: torch.optim.Optimizer, ids: set[int]) -> int | None:
    for index, group in enumerate(optimizer.param_groups):
        if not group.get(POSITIONS_KEY) and not any(id(p) in ids for p in group["params"]):
            return index
    return None


def isolate_positions(
    optimizer: torch.optim.Optimizer,
    positions: Iterable[torch.Tensor],
    lr_mult: float,
    schedulers: Iterable[Any] = (),
    adopt: Iterable[torch.Tensor] = (),
) -> list[PositionGroup]:
    """Put ``positions`` in groups of their own with lr = ``lr_mult`` x the weights' lr and no
    weight decay; momentum and other settings are copied. A mixed group is split, the positions
    moving to a new group at the end that follows the group they left. A group made only of
    positions is rescaled in place and follows the optimizer's first group of other parameters.
    ``adopt``: positions the optimizer does not hold yet; they get a new group at the end, named
    "positions", that follows that first group of other parameters.

    ``schedulers`` (those stepping ``optimizer``) get their per-group state (base lrs, lr
    factors, momentum bounds) scaled or extended the same way, so that they keep stepping every
    group. Schedulers that are not plain multiples of a base lr (``eta_min``, ReduceLROnPlateau's
    ``eps``) still move the ratio: ``follow_weights_lr`` restores it. Returns the positions'
    groups. Call once the optimizer and schedulers exist and before any optimizer state is loaded.
    """
    adopt = list(adopt)
    ids = {id(p) for p in positions} | {id(p) for p in adopt}
    schedulers = list(schedulers)
    made: list[PositionGroup] = []
    only_positions: list[int] = []
    for index, group in enumerate(list(optimizer.param_groups)):
        if group.get(POSITIONS_KEY):
            made.append(PositionGroup(index, group.get(FOLLOWS_KEY)))
            continue
        mine = [p for p in group["params"] if id(p) in ids]
        if not mine:
            continue
        if len(mine) == len(group["params"]):
            only_positions.append(index)
            continue
        group["params"] = [p for p in group["params"] if id(p) not in ids]
        made.append(
            _add_group(optimizer, mine, index, f"{group.get('name', f'group{index}')}/positions", lr_mult, schedulers)
        )
    # Once the mixed groups are split, any group not made of positions holds weights.
    follows = _first_group_without(optimizer, ids)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    adopted = [p for p in adopt if id(p) not in held]
    if adopted:
        made.append(_add_group(optimizer, adopted, follows, "positions", lr_mult, schedulers))
    for index in only_positions:
        optimizer.param_groups[index].update(_scaled(optimizer.param_groups[index], lr_mult, follows))
        for scheduler in schedulers:
            _scale_scheduler_entry(scheduler, index, lr_mult)
        made.append(PositionGroup(index, follows))
    for scheduler in schedulers:
        base = getattr(scheduler, "base_lrs", None)
        if isinstance(base, list) and len(base) != len(optimizer.param_groups):
            raise RuntimeError(
                f"{type(scheduler).__name__} keeps {len(base)} base lrs for {len(optimizer.param_groups)} "
                "param groups after splitting out ACU positions; give positions their own group in "
                "configure_optimizers instead"
            )
    return made


def _add_group(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    follows: int | None,
    name: str,
    lr_mult: float,
    schedulers: list[Any],
) -> PositionGroup:
    """A new group of ``params`` at the end, a scaled copy of group ``follows`` (of the first group
    when the optimizer holds no weights), with the schedulers' per-group state extended."""
    model_index = 0 if follows is None else follows
    old_len = len(optimizer.param_groups)
    new = _scaled(optimizer.param_groups[model_index], lr_mult, follows)
    new["name"] = name
    optimizer.add_param_group({**new, "params": params})
    for scheduler in schedulers:
        _extend_scheduler(scheduler, model_index, lr_mult, old_len)
    return PositionGroup(old_len, follows)


def follow_weights_lr(optimizer: torch.optim.Optimizer, groups: Iterable[PositionGroup], lr_mult: float) -> None:
    """Set each positions group's lr to ``lr_mult`` x the current lr of the group it follows."""
    for position_group in groups:
        if position_group.follows is None:
            continue
        weights = optimizer.param_groups[position_group.follows]
        target = optimizer.param_groups[position_group.index]
        value = lr_mult * float(weights["lr"])
        if isinstance(target["lr"], torch.Tensor):
            target["lr"].fill_(value)  # a capturable optimizer keeps its lr tensor in place
        else:
            target["lr"] = value
