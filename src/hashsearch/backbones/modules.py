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


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR residual network of the RITQ paper: (n, 3, 32, 32) -> (n, feature_dim) features.

    A 3x3, 16-channel stem; three stages of `blocks` basic blocks with 16, 32 and 64 channels,
    stride 2 at the start of stages 2 and 3; global average pooling; a `feature_dim`-wide
    fully connected feature layer with ReLU (the features ITQ is fitted on). With blocks=5
    this is ResNet-32 (He et al. 2016, section 4.2). The classifier used to train it from
    scratch is not part of the module (`hashing.deep.endtoend.train_backbone` adds it).
    """

    def __init__(self, blocks: int = 5, feature_dim: int = 256) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, c_in = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(_BasicBlock(c_in, width, 2 if stage > 0 and b == 0 else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.feature = nn.Linear(64, feature_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.feature(self.stages(self.stem(x)).mean(dim=(2, 3))))
