"""The ACU operator: reference, PyTorch fast paths, native extension, and the dispatcher."""

from .dense import extrapolated_kernel
from .dispatch import PATHS, active_conv2d, choose_path
from .reference import reference_active_conv2d

__all__ = [
    "PATHS",
    "active_conv2d",
    "choose_path",
    "extrapolated_kernel",
    "reference_active_conv2d",
]
