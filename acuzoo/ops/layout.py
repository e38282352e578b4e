"""Memory formats: every path's output and input gradient take the input's memory format
(NCHW or channels_last), as PyTorch's convolutions do."""

from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last where ``t`` is laid out so and not also NCHW-contiguous, else NCHW.

    The native kernels' rule (csrc/common/geometry.h, ``is_channels_last``): a tensor that is
    both (one channel, or one pixel) counts as NCHW, and so does any other stride pattern.
    """
    channels_last = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def empty_in_format_of(like: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of ``shape`` in ``like``'s dtype, device and memory format, with exactly
    torch.empty's strides: what a fake kernel promises and the real kernels return."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))


def empty_gradients(input, weight, positions, output_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty gradients of input, weight and positions as the backward kernels return them:
    input's in its memory format, the others contiguous, (0,) where ``output_mask`` is False."""
    return (
        empty_in_format_of(input, input.shape) if output_mask[0] else input.new_empty((0,)),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else weight.new_empty((0,)),
        torch.empty_like(positions, memory_format=torch.contiguous_format)
        if output_mask[2]
        else positions.new_empty((0,)),
    )


def exact_layout(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` with exactly the strides ``torch.empty`` gives its sizes in ``memory_format``
    (what the fake kernels promise); copied only where they differ."""
    if t.dim() != 4:
        memory_format = torch.contiguous_format
    reference = torch.empty(t.shape, device="meta", memory_format=memory_format)
    if t.stride() == reference.stride():
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format).copy_(t)


class _ToMemoryFormat(torch.autograd.Function):
    """``x`` in another memory format, whose gradient comes back in ``x``'s own."""

    @staticmethod
    def forward(x, memory_format):
        return x.contiguous(memory_format=memory_format).view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.source_format = memory_format_of(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.source_format), None


def to_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x.contiguous(memory_format=...)``, but the gradient keeps ``x``'s memory format.

    A plain ``contiguous`` passes the gradient through in the new format, so the caller's
    input gradient would change format along with the computation inside.
    """
    if not x.requires_grad:
        return x.contiguous(memory_format=memory_format)
    return _ToMemoryFormat.apply(x, memory_format)


def grad_in_format_of(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself for the forward; its gradient is returned in ``x``'s memory format."""
    return to_memory_format(x, memory_format_of(x))
