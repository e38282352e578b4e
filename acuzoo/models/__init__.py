"""The model zoo: importing this package registers every family with timm."""

from . import cifar_resnet, cifar_resnext, inception_bn, mobilenetv2, xception  # noqa: F401
