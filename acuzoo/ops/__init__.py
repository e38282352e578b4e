"""The ACU operator: reference, PyTorch paths, native kernels, and the kernel plan that
chooses between them (``KERNELS``, ``explain``, ``force``)."""

from . import traced  # noqa: F401  (registers the op traced code calls)
from .dense import extrapolated_kernel
from .dispatch import PATHS, active_conv2d
from .plan import KERNELS, THRESHOLDS, Kernel, Plan, explain, force
from .reference import reference_active_conv2d

__all__ = [
    "KERNELS",
    "PATHS",
    "THRESHOLDS",
    "Kernel",
    "Plan",
    "active_conv2d",
    "explain",
    "extrapolated_kernel",
    "force",
    "reference_active_conv2d",
]
