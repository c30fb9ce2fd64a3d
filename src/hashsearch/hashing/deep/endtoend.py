"""Training through the backbone, on the one training loop: a network from scratch (RITQ's CIFAR
ResNet, `train_backbone`) and the pieces of every deep hasher's "finetune" mode
(`DeepHasher.finetune`).

Both wrap the backbone's trunk and a head in an `ImageModel`, which takes uint8 pixels, augments
them (random crop after reflection padding, horizontal flip) in training, normalises them with
the backbone's own preprocessing, and returns the head's `HeadOutput`; `trainer.train` runs it
like any head. The trained trunk is written as a weights file the backbone loads (`weights=`),
so features, the cache and the index work on it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashsearch.hashing.deep.heads import HeadOutput
from hashsearch.hashing.deep.trainer import TrainHistory, resolve_device, seeded, train

#: Version of the fine-tuning recipe: results cached by it (weights, hashers) are redone when it changes.
FINETUNE_RECIPE = 2


class ImageModel(nn.Module):
    """uint8 (n, s, s, 3) pixels -> [augment] -> normalise -> trunk -> [standardise] -> head.

    Parameters
    ----------
    trunk : nn.Module
        The backbone's torch module, (n, 3, s, s) -> (n, d).
    head : nn.Module
        Returns a `HeadOutput` from (n, d) features.
    preprocess : Preprocess
        The backbone's preprocessing (mean and std).
    feature_mean, feature_std : (d,) arrays, optional
        The hasher's input standardisation (fixed during training).
    augment : bool
        Random crop (reflection padding of s/8) and horizontal flip, in training mode only.
    trunk_lr_scale : float
        The trunk's learning rate relative to the head's (`param_groups`): below 1 for a
        pretrained backbone, 1 for one trained from scratch.
    pretrained : bool
        The trunk starts from trained weights: its batch-norm layers stay in eval mode (their
        running statistics, not each batch's, normalise; batch statistics of a new domain
        shift every feature the head was fitted on), and its weights get no L2 penalty (under
        Adam a coupled L2 term moves every weight toward 0 at the learning rate's pace).
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module,
        preprocess,
        feature_mean=None,
        feature_std=None,
        augment: bool = True,
        trunk_lr_scale: float = 1.0,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = trunk.to(memory_format=torch.channels_last)
        self.head = head
        self.augment = augment
        self.trunk_lr_scale = float(trunk_lr_scale)
        self.pretrained = pretrained
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.standardise = feature_mean is not None
        if self.standardise:
            self.register_buffer("feature_mean", torch.as_tensor(np.asarray(feature_mean, np.float32)))
            self.register_buffer("feature_std", torch.as_tensor(np.asarray(feature_std, np.float32)))

    def param_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups: the trunk at ``lr * trunk_lr_scale`` (no L2 when pretrained), the head at `lr`."""
        trunk = {"params": list(self.trunk.parameters()), "lr": lr * self.trunk_lr_scale}
        if self.pretrained:
            trunk["weight_decay"] = 0.0
        return [trunk, {"params": list(self.head.parameters()), "lr": lr}]

    def train(self, mode: bool = True) -> ImageModel:
        super().train(mode)
        if mode and self.pretrained:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The trunk's (standardised) features of a uint8 batch, augmented in training mode."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        if self.training and self.augment:
            x = random_crop_flip(x)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        f = self.trunk(x)
        return (f - self.feature_mean) / self.feature_std if self.standardise else f

    def forward(self, pixels: torch.Tensor) -> HeadOutput:
        return self.head(self.features(pixels))


def random_crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Per image: pad s/8 pixels by reflection, crop a random s x s window, flip half of them.

    Draws from torch's global RNG (seeded by the training loop).
    """
    n, c, s, _ = x.shape
    pad = max(1, s // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1))
    flip = torch.rand(n, 1) < 0.5
    ar = torch.arange(s)
    rows = dy + ar  # (n, s)
    cols = dx + torch.where(flip, s - 1 - ar, ar)  # (n, s), reversed for the flipped images
    # One gather for the whole batch: out[i, ch, r, q] = padded[i, ch, rows[i, r], cols[i, q]].
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class _Classifier(nn.Module):
    """A linear classifier on the trunk's features: what a network trained from scratch learns through."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, f: torch.Tensor) -> HeadOutput:
        return HeadOutput(codes_continuous=f, logits=self.fc(f), pre_activation=f)


def check_pixels(pixels: np.ndarray, labels, backbone) -> np.ndarray:
    """`pixels` as (n, s, s, 3) uint8 training crops at the backbone's input size, one per label, or a ValueError."""
    pixels = np.asarray(pixels)
    s = backbone.preprocess.input_size
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
        raise ValueError(
            f"pixels must be (n, {s}, {s}, 3) uint8 crops at {backbone.name}'s input size, got "
            f"{pixels.dtype} {pixels.shape}; make them with hashsearch.pipeline.local.extract_pixels"
        )
    if len(pixels) != len(labels):
        raise ValueError(f"pixels has {len(pixels)} images but labels has {len(labels)}; pass one label per image")
    if len(pixels) < 2:
        raise ValueError(f"training needs at least 2 images, got {len(pixels)}")
    return pixels


@torch.no_grad()
def trunk_features(trunk: nn.Module, pixels: np.ndarray, preprocess, device, batch_size: int = 128) -> np.ndarray:
    """Features of uint8 pixels through `trunk` in eval mode (no augmentation)."""
    model = ImageModel(trunk, nn.Identity(), preprocess, augment=False).to(device).eval()
    out = [
        model.features(torch.from_numpy(pixels[i : i + batch_size]).to(device)).float().cpu().numpy()
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def trained_backbone(backbone, trunk: nn.Module, weights_out: str | os.PathLike):
    """Write `trunk`'s weights to `weights_out`; the backbone of the same kind that loads them."""
    path = backbone.save_weights(trunk.cpu().eval(), Path(weights_out))
    return type(backbone)(weights=path, input_size=backbone.preprocess.input_size)


def train_backbone(
    backbone,
    pixels: np.ndarray,
    labels: np.ndarray,
    weights_out: str | os.PathLike,
    *,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str = "cpu",
    augment: bool = True,
    progress: bool = True,
):
    """Train `backbone`'s network with a softmax classifier on labelled images; write its weights.

    Starts from `backbone.init_module()` (random for `cifar-resnet32`, as the RITQ paper trains
    it; the pretrained weights otherwise), Adam with a cosine learning-rate decay, crop/flip
    augmentation. Returns (the backbone with the trained weights, the `TrainHistory`).
    """
    from hashsearch.hashing.deep.losses import create_loss

    pixels = check_pixels(pixels, labels, backbone)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"training a classifier needs at least 2 classes, got {len(classes)}")
    dev = resolve_device(device)
    with seeded(seed, dev):
        trunk = backbone.init_module()
        head = _Classifier(backbone.feature_dim, len(classes))
    model = ImageModel(trunk, head, backbone.preprocess, augment=augment)
    loss = create_loss("cross-entropy", n_bits=backbone.feature_dim, n_classes=len(classes))
    history = train(
        model,
        loss,
        pixels,
        targets.astype(np.int64),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        device=dev,
        progress=progress,
        cosine=True,
    )
    return trained_backbone(backbone, trunk, weights_out), history


def fit_head(hasher, features: np.ndarray, labels, **loop):
    """ "head" mode with the training loop's options: `hasher.fit(features, labels)` where `loop`
    (`trainer.train`'s validate, patience, checkpoint, desc) reaches the loop. Returns (the
    fitted hasher, its `TrainHistory`).

    `validate(head)` is called with the head, whose input is ``hasher.standardize(features)``.

    Raises
    ------
    ValueError
        As `Hasher.fit`: features not a finite (n, d) array, labels not one per row.
    """
    from hashsearch.validation import check_features

    X = check_features(features, "features")
    hasher._check_n_bits()
    head, loss_fn, targets, device = hasher._build(X, np.asarray(labels))
    targets = hasher._train_targets(X, loss_fn, targets)
    history = train(
        head,
        loss_fn,
        hasher.standardize(X, _checked=True),
        targets,
        epochs=hasher.epochs,
        **hasher._settings(device),
        **loop,
    )
    hasher._keep(head, history)
    hasher.n_features_in_ = X.shape[1]
    return hasher, history


__all__ = [
    "ImageModel",
    "fit_head",
    "TrainHistory",
    "check_pixels",
    "random_crop_flip",
    "train_backbone",
    "trained_backbone",
    "trunk_features",
]
