"""RITQ (ResNet + ITQ): ITQ on the features of a CIFAR residual network trained from scratch."""

from __future__ import annotations

from typing import ClassVar

from hashsearch.hashing.base import register_hasher
from hashsearch.hashing.itq import ITQ


@register_hasher("ritq")
class RITQ(ITQ):
    """RITQ (Wang, Qiang, Zou & Lu, "Image retrieval based on ResNet and ITQ"; the paper's text
    carries no date, its latest reference is from 2016): PCA + ITQ on the 256-d feature layer of
    a ResNet-32 trained from scratch with a classifier on the labelled training images.

    The network is the backbone 'cifar-resnet32' (`backbones.cifar_resnet`), trained by
    `hashing.deep.endtoend.train_backbone`; `hashsearch bench` / `eval` train it on the
    protocol's training split and hand its features to this hasher (`feature_backbones`);
    `hashsearch train --method ritq` trains it on the labelled images and saves it as the
    model's backbone (`experiments.training`).
    On any other features RITQ is ITQ; the paper's variant "ITQ on the pretrained backbone's
    features" is the row 'itq'. Parameters as in `ITQ`.
    """

    feature_backbones: ClassVar[tuple[str | None, ...]] = ("cifar-resnet32",)
