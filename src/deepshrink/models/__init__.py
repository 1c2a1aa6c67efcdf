"""Model zoo and the name -> constructor registry."""

from .registry import MODELS, arch_of, build_model, model_kwargs_for, register_model
from .zoo import BasicBlock, LeNet5, LeNet300, ResNet20, VGGSmall

__all__ = [
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "ResNet20",
    "VGGSmall",
    "arch_of",
    "build_model",
    "model_kwargs_for",
    "register_model",
]
