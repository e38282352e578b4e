"""The operator as one opaque op for traced code: ``torch.compile`` and ``torch.export``.

While a graph is traced the positions have no values, so neither the plan (it reads their
spread) nor the finiteness check can run then. Traced calls go to ``acuzoo::planned_conv2d``
instead: its implementation plans, checks and runs at run time, with the values, as an eager
call does; the compiler sees one node per ACU layer (no graph break), and fake kernels that
give the real outputs' sizes, strides and dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .geometry import output_size
from .layout import empty_gradients, empty_in_format_of, exact_layout, memory_format_of


@torch.library.custom_op("acuzoo::planned_conv2d", mutates_args=())
def planned_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
    path: str,
) -> torch.Tensor:
    """The ACU's forward, planned with the values at hand (``dispatch.run_planned``)."""
    from .dispatch import run_planned

    out = run_planned(input, weight, positions, bias, (stride[0], stride[1]), groups, path)
    return exact_layout(out.to(input.dtype), memory_format_of(input))


@planned_conv2d.register_fake
def _planned_conv2d_fake(input, weight, positions, bias, stride, groups, path):
    return empty_in_format_of(input, (input.shape[0], weight.shape[0], *output_size(input.shape[-2:], stride)))


@torch.library.custom_op("acuzoo::planned_conv2d_backward", mutates_args=())
def planned_conv2d_backward(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    stride: Sequence[int],
    groups: int,
    path: str,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of input, weight and positions (empty where ``output_mask`` is False), by the
    backward kernel the plan names for these values."""
    from .dispatch import run_planned_backward

    grads = run_planned_backward(grad, input, weight, positions, (stride[0], stride[1]), groups, path, output_mask)
    out = []
    for wanted, g, like in zip(output_mask, grads, (input, weight, positions)):
        if not wanted:
            out.append(like.new_empty((0,)))
        elif like is input:
            out.append(exact_layout(g.to(like.dtype), memory_format_of(input)))
        else:
            out.append(exact_layout(g.to(like.dtype), torch.contiguous_format))
    return tuple(out)


@planned_conv2d_backward.register_fake
def _planned_conv2d_backward_fake(grad, input, weight, positions, stride, groups, path, output_mask):
    return empty_gradients(input, weight, positions, output_mask)


def _setup_context(ctx, inputs, output) -> None:
    input, weight, positions, bias, stride, groups, path = inputs
    ctx.save_for_backward(input, weight, positions)
    ctx.arguments = (list(stride), groups, path)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad):
    input, weight, positions = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    grads = [None, None, None]
    if any(mask):
        computed = torch.ops.acuzoo.planned_conv2d_backward(grad, input, weight, positions, *ctx.arguments, mask)
        grads = [g if wanted else None for g, wanted in zip(computed, mask)]
    grad_bias = None
    if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
        grad_bias = grad.sum((0, 2, 3)).to(ctx.bias_dtype)
    return (*grads, grad_bias, None, None, None)


planned_conv2d.register_autograd(_backward, setup_context=_setup_context)
