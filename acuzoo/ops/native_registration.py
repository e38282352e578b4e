"""Python side of the native ops' registration: fake (meta) kernels and autograd.

The C++ library defines the schemas and the CPU/CUDA kernels (csrc/acu_ops.cpp); this
module adds what ``torch.compile`` (fake tensors, shape propagation) and autograd need.
Called once, right after the library is loaded (``native.load``).
"""

from __future__ import annotations

import torch

_registered = False


def _out_size(size, stride):
    return (size - 1) // stride + 1


def _memory_format(input):
    """The kernels' rule (acu_driver.h): outputs take the input's memory format."""
    channels_last = not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _fake_forward(input, weight, positions, bias, stride, groups):
    n, _, h, w = input.shape
    shape = (n, weight.shape[0], _out_size(h, stride[0]), _out_size(w, stride[1]))
    return input.new_empty(shape).contiguous(memory_format=_memory_format(input))


def _fake_backward(grad_output, input, weight, positions, stride, groups, output_mask):
    def grad_like(t, wanted):
        return t.new_empty(t.shape) if wanted else t.new_empty((0,))

    grad_input = grad_like(input, output_mask[0])
    if output_mask[0]:
        grad_input = grad_input.contiguous(memory_format=_memory_format(input))
    return (
        grad_input,
        grad_like(weight, output_mask[1]),
        grad_like(positions, output_mask[2]),
    )


def _setup_context(ctx, inputs, output):
    input, weight, positions, bias, stride, groups = inputs
    ctx.save_for_backward(input, weight, positions)
    ctx.stride = stride
    ctx.groups = groups
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    input, weight, positions = ctx.saved_tensors
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    grads = [None, None, None]
    if any(mask):
        grads = list(
            torch.ops.acuzoo.active_conv2d_backward(grad, input, weight, positions, ctx.stride, ctx.groups, mask)
        )
        grads = [g if wanted else None for g, wanted in zip(grads, mask)]
    grad_bias = None
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.sum((0, 2, 3))
    return grads[0], grads[1], grads[2], grad_bias, None, None


def register() -> None:
    """Register the fake kernels and the autograd formula (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("acuzoo::active_conv2d")(_fake_forward)
    torch.library.register_fake("acuzoo::active_conv2d_backward")(_fake_backward)
    torch.library.register_autograd("acuzoo::active_conv2d", _backward, setup_context=_setup_context)
    _registered = True
