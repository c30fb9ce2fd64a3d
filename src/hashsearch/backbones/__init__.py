"""Backbones: networks, each carrying its preprocessing, and the inference runtimes that run them
behind one interface (`FeatureExtractor`: `extract(pixels) -> features`, `feature_dim`, `cache_key`).

Nothing here reads files or caches features: that is `hashsearch.pipeline`.
"""

from hashsearch.backbones import cifar_resnet, efficientnet  # noqa: F401  (registers the built-ins)
from hashsearch.backbones.base import (
    Backbone,
    Preprocess,
    backbones,
    create_backbone,
    list_backbones,
    register_backbone,
)
from hashsearch.backbones.concat import ConcatBackbone
from hashsearch.backbones.runtime import (
    RUNTIMES,
    FeatureExtractor,
    OnnxExtractor,
    TorchExtractor,
    make_extractor,
)

DEFAULT_BACKBONE = "efficientnet-lite0"

__all__ = [
    "Backbone",
    "ConcatBackbone",
    "DEFAULT_BACKBONE",
    "FeatureExtractor",
    "OnnxExtractor",
    "Preprocess",
    "RUNTIMES",
    "TorchExtractor",
    "backbones",
    "create_backbone",
    "list_backbones",
    "make_extractor",
    "register_backbone",
]
