"""LightningDataModules for image classification."""

from .base import ClassificationData
from .cifar import CIFARData
from .fashion_mnist import FashionMNISTData
from .image_folder import ImageFolderData
from .synthetic import SyntheticData

__all__ = ["CIFARData", "ClassificationData", "FashionMNISTData", "ImageFolderData", "SyntheticData"]
