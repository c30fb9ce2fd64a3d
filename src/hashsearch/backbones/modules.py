"""PyTorch modules shared by the backbones (imported lazily: torch is slow to import)."""

from __future__ import annotations

import torch
from torch import nn


class PooledTrunk(nn.Module):
    """A convolutional trunk with `extract_features` + global average pooling: (n, 3, s, s) -> (n, c)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))
