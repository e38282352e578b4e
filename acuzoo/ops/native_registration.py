"""Python side of the native ops' registration: the fake (meta) kernels.

The C++ library defines the schemas, the CPU/CUDA kernels and autograd (csrc/ops.cpp,
csrc/autograd.cpp); this module adds what ``torch.compile`` needs (fake tensors,
shape propagation).
Called once, right after the library is loaded (``native.load``).
"""

from __future__ import annotations

import torch

from .geometry import output_size
from .layout import empty_gradients, empty_in_format_of

_registered = False


def _fake_forward(input, weight, positions, bias, stride, groups, forward_kernel, backward_kernel):
    return empty_in_format_of(input, (input.shape[0], weight.shape[0], *output_size(input.shape[-2:], stride)))


def _fake_backward(grad_output, input, weight, positions, stride, groups, output_mask, kernel):
    return empty_gradients(input, weight, positions, output_mask)


def register() -> None:
    """Register the fake kernels (idempotent); autograd is in C++ (csrc/autograd.cpp)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("acuzoo::active_conv2d")(_fake_forward)
    torch.library.register_fake("acuzoo::active_conv2d_backward")(_fake_backward)
    _registered = True
