"""Model zoo and the name -> constructor registry."""

from .registry import (
    LIBRARIES,
    MODELS,
    arch_of,
    build_from_spec,
    build_model,
    load_weights,
    model_kwargs_for,
    register_model,
)
from .zoo import BasicBlock, LeNet5, LeNet300, ResNet20, VGGSmall

__all__ = [
    "LIBRARIES",
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "ResNet20",
    "VGGSmall",
    "arch_of",
    "build_from_spec",
    "build_model",
    "load_weights",
    "model_kwargs_for",
    "register_model",
]
