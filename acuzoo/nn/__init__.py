"""ACU layer and model surgery."""

from .active_conv import MAX_FUSED_KERNEL_SIZE, ActiveConv2d, grid_positions
from .displacement import LayerDisplacement, displacement_by_layer
from .position_grad import normalize_position_grad_, position_parameters
from .surgery import AcuConversion, convert_to_acu, fuse_acu, is_depthwise_conv, plan_acu_conversion

__all__ = [
    "MAX_FUSED_KERNEL_SIZE",
    "AcuConversion",
    "ActiveConv2d",
    "LayerDisplacement",
    "convert_to_acu",
    "displacement_by_layer",
    "fuse_acu",
    "grid_positions",
    "is_depthwise_conv",
    "normalize_position_grad_",
    "plan_acu_conversion",
    "position_parameters",
]
