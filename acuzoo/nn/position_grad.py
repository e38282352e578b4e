"""The original ACU's normalized position gradient (DESIGN.md, Training conventions)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .active_conv import ActiveConv2d


def position_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Every ACU position parameter in ``module``, each once."""
    seen: set[int] = set()
    for m in module.modules():
        if isinstance(m, ActiveConv2d) and id(m.positions) not in seen:
            seen.add(id(m.positions))
            yield m.positions


@torch.no_grad()
def normalize_position_grad_(module_or_params: nn.Module | Iterable[torch.Tensor]) -> None:
    """Divide each synapse's (g_alpha, g_beta) by its L2 norm where that norm is non-zero.

    Call it once the gradient is complete (accumulated, all-reduced, unscaled) and before
    clipping and the optimizer step. Accepts a module (its ACU positions) or position tensors
    of shape (..., 2).
    """
    if isinstance(module_or_params, nn.Module):
        params = list(position_parameters(module_or_params))
    else:
        params = list(module_or_params)
    for p in params:
        if p.grad is None:
            continue
        if p.grad.shape[-1] != 2:
            raise ValueError(f"position gradients must have shape (..., 2), got {tuple(p.grad.shape)}")
        norm = torch.linalg.vector_norm(p.grad, dim=-1, keepdim=True)
        p.grad.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))
