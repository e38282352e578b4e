"""Training with PyTorch Lightning: the classifier module, data modules and ACU callbacks.

Importing ``acuzoo`` does not import this package (nor Lightning); import ``acuzoo.lit``.
"""

from .checkpoint import LastStateCheckpoint, RandomState
from .data import CIFARData, ClassificationData, FashionMNISTData, ImageFolderData, SyntheticData
from .module import ImageClassifier, build_model
from .position_lr import PositionLearningRate
from .position_plot import PositionPlot, plot_positions
from .warmup import PositionWarmup

__all__ = [
    "CIFARData",
    "ClassificationData",
    "FashionMNISTData",
    "ImageClassifier",
    "ImageFolderData",
    "LastStateCheckpoint",
    "PositionLearningRate",
    "PositionPlot",
    "PositionWarmup",
    "RandomState",
    "SyntheticData",
    "build_model",
    "plot_positions",
]
