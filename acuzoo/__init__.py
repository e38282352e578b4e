"""acuzoo: the Active Convolution Unit (ACU) and a timm/Lightning model zoo built on it.

``import acuzoo`` registers every model with timm; nothing else heavy happens at import
(no extension build, no Lightning import, no file I/O).
"""

from . import models  # noqa: F401  (registers the zoo with timm)
from .models import list_models, resolve_model_name
from .nn import (
    ActiveConv2d,
    convert_to_acu,
    fuse_acu,
    is_depthwise_conv,
    normalize_position_grad_,
    plan_acu_conversion,
    position_parameters,
)
from .ops import active_conv2d

__version__ = "0.1.0"

__all__ = [
    "ActiveConv2d",
    "active_conv2d",
    "convert_to_acu",
    "fuse_acu",
    "is_depthwise_conv",
    "list_models",
    "normalize_position_grad_",
    "plan_acu_conversion",
    "position_parameters",
    "resolve_model_name",
]
