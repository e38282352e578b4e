"""ACU layer and model surgery."""

from .active_conv import ActiveConv2d, grid_positions
from .position_grad import normalize_position_grad_, position_parameters
from .surgery import convert_to_acu, fuse_acu, is_depthwise_conv

__all__ = [
    "ActiveConv2d",
    "convert_to_acu",
    "fuse_acu",
    "grid_positions",
    "is_depthwise_conv",
    "normalize_position_grad_",
    "position_parameters",
]
