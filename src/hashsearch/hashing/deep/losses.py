"""Hashing losses (one registry). A deep hasher names its loss; the training loop only calls it.

Interface: a loss is an `nn.Module` built as ``Loss(n_bits=..., n_classes=..., **params)``
(it may ignore either) whose ``forward(output, labels)`` takes the head's `HeadOutput` for a
batch and that batch's labels (int64 class ids, shape (b,)) and returns a scalar tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hashsearch.hashing.deep.heads import HeadOutput
from hashsearch.registry import Registry

losses: Registry[nn.Module] = Registry("loss")


def register_loss(name: str):
    """Class decorator: register a loss module under `name` (also sets `cls.name`)."""

    def decorate(cls):
        cls.name = name
        return losses.register(name)(cls)

    return decorate


def list_losses() -> list[str]:
    """Names of all registered losses."""
    return losses.names()


def create_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as `name`, e.g. ``create_loss("cross-entropy", n_bits=48, n_classes=10)``."""
    return losses.create(name, **params)


class HashLoss(nn.Module):
    """Base of the registered losses: stores the code length and class count it was built for."""

    def __init__(self, n_bits: int, n_classes: int | None = None) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.n_classes = n_classes

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_loss("cross-entropy")
class CrossEntropyLoss(HashLoss):
    """Point-wise softmax cross-entropy on the head's class logits (DLBHC).

    Needs a head with a classifier (`output.logits` not None) and int64 class ids in [0, n_classes).
    """

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        if output.logits is None:
            raise ValueError(
                "loss 'cross-entropy' needs class logits, but the head returned logits=None; "
                "use a head with a classification layer, such as 'latent-sigmoid'"
            )
        return F.cross_entropy(output.logits, labels)
