"""Python side of the native ops' registration: the fake (meta) kernels.

The C++ library defines the schemas, the CPU/CUDA kernels and autograd (csrc/ops.cpp,
csrc/autograd.cpp); this module adds what ``torch.compile`` needs (fake tensors,
shape propagation).
Called once, right after the library is loaded (``native.load``).
"""

from __future__ import annotations

import torch

from .layout import memory_format_of

_registered = False


def _out_size(size, stride):
    return (size - 1) // stride + 1


def _fake_forward(input, weight, positions, bias, stride, groups, forward_kernel, backward_kernel):
    n, _, h, w = input.shape
    shape = (n, weight.shape[0], _out_size(h, stride[0]), _out_size(w, stride[1]))
    return input.new_empty(shape).contiguous(memory_format=memory_format_of(input))


def _fake_backward(grad_output, input, weight, positions, stride, groups, output_mask, kernel):
    def grad_like(t, wanted):
        return t.new_empty(t.shape) if wanted else t.new_empty((0,))

    grad_input = grad_like(input, output_mask[0])
    if output_mask[0]:
        grad_input = grad_input.contiguous(memory_format=memory_format_of(input))
    return (
        grad_input,
        grad_like(weight, output_mask[1]),
        grad_like(positions, output_mask[2]),
    )


def register() -> None:
    """Register the fake kernels (idempotent); autograd is in C++ (csrc/autograd.cpp)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("acuzoo::active_conv2d")(_fake_forward)
    torch.library.register_fake("acuzoo::active_conv2d_backward")(_fake_backward)
    _registered = True
