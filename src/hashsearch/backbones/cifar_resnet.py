"""The CIFAR ResNet of the RITQ paper: a backbone trained on the collection itself, from scratch."""

from __future__ import annotations

import os
from pathlib import Path

from hashsearch.backbones.base import Backbone, Preprocess, check_weights_file, register_backbone

# Per-channel statistics of the CIFAR-10 training images.
_MEAN = (0.4914, 0.4822, 0.4465)
_STD = (0.2470, 0.2435, 0.2616)


@register_backbone("cifar-resnet32")
class CifarResNet32(Backbone):
    """ResNet-32 for 32 x 32 images with a 256-d feature layer (see `modules.CifarResNet`).

    It has no pretrained weights: train it on a labelled collection with
    ``hashing.deep.endtoend.train_backbone`` (what `hashsearch bench` does for the RITQ and
    DHFI rows), then pass the file it writes as `weights`.

    Parameters
    ----------
    weights : path
        The trained state-dict file. Needed to extract features; not to train.
    input_size : int
        Square input size (32, CIFAR's own; larger images are resized to it).
    """

    feature_dim = 256

    def __init__(self, weights: str | os.PathLike | None = None, input_size: int = 32) -> None:
        if not isinstance(input_size, int) or not 16 <= input_size <= 256:
            raise ValueError(f"input_size must be an integer in [16, 256], got {input_size!r}")
        self.weights = None if weights is None else str(weights)
        self.input_size = input_size
        self.preprocess = Preprocess(input_size, _MEAN, _STD)

    @property
    def weights_path(self) -> Path:
        if self.weights is None:
            raise FileNotFoundError(
                f"{self.name} has no pretrained weights: train it on your labelled images with "
                "hashsearch.hashing.deep.endtoend.train_backbone(...) and pass weights=PATH to the file it writes"
            )
        return check_weights_file(self.weights, self.name)

    def init_module(self):
        from hashsearch.backbones.modules import CifarResNet

        return CifarResNet()

    def torch_module(self):
        import torch

        net = self.init_module()
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"weights file {self.weights_path} does not fit {self.name}: {e}") from e
        return net


#: The side, in pixels, the pooled ResNet-32 works at (CIFAR's).
_WORK_SIZE = 32


@register_backbone("cifar-resnet32-pooled")
class PooledCifarResNet32(CifarResNet32):
    """ResNet-32 on crops of any size: the crop is average-pooled to about 32 px, then the
    network of `CifarResNet32` runs on it.

    What DHFI's second network is in a model file (`hashsearch train --method dhfi`): it reads
    the same crops as the pretrained backbone beside it (a `ConcatBackbone` has one input size),
    while costing what a ResNet-32 costs at CIFAR's size. The pooling is part of the module, so
    training (on the crops at `input_size`) and extraction (inside the ONNX graph) compute the
    same thing.

    Parameters
    ----------
    weights : path
        The trained state-dict file (from `hashing.deep.endtoend.train_backbone`, or
        `save_weights`); needed to extract features, not to train.
    input_size : int
        Square crop size in pixels, 16 to 256 (default 128). The crop is pooled by
        ``pool = max(1, round(input_size / 32))`` (non-overlapping windows; a remainder of
        ``input_size % pool`` pixels at the right and bottom edges is dropped), so the network
        sees ``input_size // pool`` pixels a side: 32 for 128, 160, 224; 30 for 240.
    """

    def __init__(self, weights: str | os.PathLike | None = None, input_size: int = 128) -> None:
        super().__init__(weights=weights, input_size=input_size)
        self.pool = max(1, round(input_size / _WORK_SIZE))

    def init_module(self):
        from torch import nn

        from hashsearch.backbones.modules import CifarResNet

        # AvgPool2d(1) is the identity: one layout of the state dict ("1.<resnet key>") for every size.
        return nn.Sequential(nn.AvgPool2d(self.pool), CifarResNet())
