"""Backbones: pretrained feature extractors, each carrying its preprocessing; the feature cache."""

from hashsearch.backbones.base import (
    Backbone,
    Preprocess,
    backbones,
    create_backbone,
    list_backbones,
    register_backbone,
)
from hashsearch.backbones import cifar_resnet, efficientnet  # noqa: E402,F401  (registers the built-ins)

DEFAULT_BACKBONE = "efficientnet-lite0"

__all__ = [
    "Backbone",
    "DEFAULT_BACKBONE",
    "Preprocess",
    "backbones",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
