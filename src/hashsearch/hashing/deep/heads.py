"""Heads: the trainable layers between backbone features and binary codes (one registry).

Every head is an `nn.Module` built as ``Head(in_dim, n_bits, n_classes, **params)`` whose
`forward(features)` returns a `HeadOutput`. Its codes come from a chain of linear layers named
in `code_layers` (ReLU between them, the last one `latent`), whose pre-activation ``z`` gives
bit ``z >= 0`` (sigmoid(z) >= 0.5, tanh(z) >= 0 and sign(z) all agree on that), so a fitted
deep hasher can encode with NumPy alone from the layers' weights. `activation` names the
function that makes the relaxed codes from ``z`` ("sigmoid" or "tanh").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from hashsearch.registry import Registry

heads: Registry[nn.Module] = Registry("head")


#: Class decorator: register an `nn.Module` head under a name (also sets `cls.name`).
register_head = heads.register
#: Names of all registered heads.
list_heads = heads.names


def create_head(name: str, **params: Any) -> nn.Module:
    """Build the head registered as `name`, e.g. ``create_head("latent-sigmoid", in_dim=512, n_bits=48, n_classes=10)``."""
    return heads.create(name, **params)


class HeadOutput(NamedTuple):
    """What a head returns; each loss reads the fields it needs.

    Attributes
    ----------
    codes_continuous : (n, n_bits) tensor
        The relaxed codes. Their range is the head's `code_range`: (0, 1) for sigmoid heads
        such as `LatentSigmoidHead`, (-1, 1) for tanh heads. The binary code of a row is
        ``pre_activation >= 0`` whatever the activation.
    logits : (n, n_classes) tensor or None
        Class scores from a classifier on top of the codes; None for heads without one.
    pre_activation : (n, n_bits) tensor
        The code layer's output before its activation (for numerically stable losses).
    """

    codes_continuous: torch.Tensor
    logits: torch.Tensor | None
    pre_activation: torch.Tensor


@register_head("latent-sigmoid")
class LatentSigmoidHead(nn.Module):
    """DLBHC's latent layer: dropout -> Linear(in_dim, n_bits) -> sigmoid = H -> Linear(n_bits, n_classes).

    H is the relaxed code in (0, 1); the classifier on top makes H carry the class semantics
    (Lin et al., CVPR-W 2015). Bit = H >= 0.5.

    Parameters
    ----------
    in_dim : int
        Feature dimension.
    n_bits : int
        Number of latent units, i.e. the code length.
    n_classes : int
        Number of classes of the classification layer.
    dropout : float
        Dropout probability applied to the input features during training.
    """

    code_range = (0.0, 1.0)
    activation = "sigmoid"
    code_layers = ("latent",)

    def __init__(self, in_dim: int, n_bits: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.latent = nn.Linear(in_dim, n_bits)
        self.classifier = nn.Linear(n_bits, n_classes)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        z = self.latent(self.dropout(features))
        h = torch.sigmoid(z)
        return HeadOutput(codes_continuous=h, logits=self.classifier(h), pre_activation=z)


@register_head("latent-tanh")
class LatentTanhHead(nn.Module):
    """Dropout -> Linear(in_dim, n_bits) -> tanh: relaxed codes in (-1, 1) for pairwise and centre losses.

    The hash layer of DPSH, DSH, HashNet and CSQ on top of backbone features; no classifier
    (``logits=None``). Bit = tanh(z) >= 0.
    """

    code_range = (-1.0, 1.0)
    activation = "tanh"
    code_layers = ("latent",)

    def __init__(self, in_dim: int, n_bits: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.latent = nn.Linear(in_dim, n_bits)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        z = self.latent(self.dropout(features))
        return HeadOutput(codes_continuous=torch.tanh(z), logits=None, pre_activation=z)


@register_head("feature-enhance")
class FeatureEnhanceHead(nn.Module):
    """DFEH's head: a feature-enhancement layer (Linear(in_dim, hidden) + ReLU) before the tanh hash layer.

    Parameters
    ----------
    hidden : int
        Width of the enhancement layer.
    dropout : float
        Dropout on the input features and on the enhanced features during training.
    """

    code_range = (-1.0, 1.0)
    activation = "tanh"
    code_layers = ("enhance", "latent")

    def __init__(self, in_dim: int, n_bits: int, n_classes: int, dropout: float = 0.0, hidden: int = 512) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.enhance = nn.Linear(in_dim, hidden)
        self.latent = nn.Linear(hidden, n_bits)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        e = torch.relu(self.enhance(self.dropout(features)))
        z = self.latent(self.dropout(e))
        return HeadOutput(codes_continuous=torch.tanh(z), logits=None, pre_activation=z)
