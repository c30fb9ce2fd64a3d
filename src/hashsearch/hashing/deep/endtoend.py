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

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashsearch.hashing.deep.heads import HeadOutput
from hashsearch.hashing.deep.trainer import TrainHistory, resolve_device, seeded, train

#: Version of the fine-tuning recipe: results cached by it (weights, hashers) are redone when it changes.
FINETUNE_RECIPE = 2

#: What each `Recipe` setting takes, in the words of `Recipe.parse`'s errors.
_ALLOWED = {
    "epochs": "a whole number >= 1, or none (the method's epochs)",
    "trunk_lr_scale": "a number > 0",
    "schedule": "one of constant, cosine",
    "augment": "one of none, crop-flip, strong",
    "ema": "a number in [0, 1) (0: off; e.g. 0.99)",
    "label_smoothing": "a number in [0, 1) (0: off)",
    "start_size": "a whole number >= 32, or none (full size throughout)",
}
#: The augmentations `Recipe.augment` names (see `augment_batch`).
AUGMENTATIONS = ("none", "crop-flip", "strong")
#: The learning-rate schedules of the joint stage (`Recipe.schedule`).
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Recipe:
    """How finetune mode's joint stage (backbone and head together) trains: the levers of the CPU recipe.

    Attributes
    ----------
    epochs : int or None
        Joint epochs (None: the method's `epochs`).
    trunk_lr_scale : float
        The backbone's learning rate relative to the head's (> 0).
    schedule : {"constant", "cosine"}
        The learning rate held, or annealed to 0 over the joint epochs (cosine, Loshchilov &
        Hutter, ICLR 2017).
    augment : {"none", "crop-flip", "strong"}
        "crop-flip": reflection pad s/8, random s x s crop, horizontal flip. "strong": a random
        resized crop (area 35-100 %, aspect 3/4-4/3), flip, and brightness/contrast/saturation
        jitter of +-30 % (the "Inception" crop of Szegedy et al., CVPR 2015, without a library).
    ema : float
        Decay per step of an exponential moving average of the weights (0: none; e.g. 0.99),
        warming up as min(ema, (1 + t) / (10 + t)) after t steps: the average, not the last
        step's weights, is validated and kept (Polyak & Juditsky, 1992).
    label_smoothing : float
        In [0, 1): softened class targets (Szegedy et al., CVPR 2016) for the losses that have
        class targets (DLBHC's cross-entropy, CSQ's hash centres); other losses refuse it.
    start_size : int or None
        Progressive resizing: the first joint epoch sees images downscaled to this many pixels,
        growing linearly to the backbone's input size by the last epoch (small images first,
        cheaper epochs; Tan & Le, "EfficientNetV2", ICML 2021). At least 32 (the networks
        downsample 32 times). None: full size throughout.
        Validation and encoding always use the full size.
    """

    epochs: int | None = None
    trunk_lr_scale: float = 0.1
    schedule: str = "constant"
    augment: str = "crop-flip"
    ema: float = 0.0
    label_smoothing: float = 0.0
    start_size: int | None = None

    def __post_init__(self) -> None:
        from hashsearch.validation import check_int, check_real

        check_int("epochs", self.epochs, low=1, allow_none=True, none_means="the method's epochs")
        check_real("trunk_lr_scale", self.trunk_lr_scale, low=0, low_open=True, finite=True)
        check_real("ema", self.ema, low=0, high=1, high_open=True)
        check_real("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        check_int("start_size", self.start_size, low=32, allow_none=True, none_means="full size throughout")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment={self.augment!r}: use one of {', '.join(AUGMENTATIONS)}")

    @classmethod
    def parse(cls, spec: str) -> Recipe:
        """A recipe from "NAME", "key=value,..." or "NAME,key=value,..." (NAME from `RECIPES`).

        ``Recipe.parse("cpu,epochs=4")`` is the "cpu" recipe with 4 joint epochs. A value
        "none" is None (epochs: the method's; start_size: full size throughout).

        Raises
        ------
        ValueError
            An empty spec, an unknown name or key, a value of the wrong type, or a value out of
            range; the message names ``--recipe``, the value given and what is allowed.
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        items = [p.strip() for p in str(spec).split(",") if p.strip()]
        if not items:
            raise ValueError(
                f"--recipe {spec!r} is empty; give a recipe name ({', '.join(RECIPES)}), key=value pairs, or both "
                "('cpu,epochs=8'), or leave --recipe out for 'paper'"
            )
        base, changes = cls(), {}
        for i, part in enumerate(items):
            if "=" not in part:
                if i:
                    raise ValueError(
                        f"--recipe {spec!r}: a recipe name ({part!r}) comes first, then key=value pairs ('cpu,epochs=8')"
                    )
                if part not in RECIPES:
                    raise ValueError(
                        f"--recipe {part!r} is not one of {', '.join(RECIPES)} (the named recipes), nor key=value pairs"
                    )
                base = RECIPES[part]
                continue
            key, value = (x.strip() for x in part.split("=", 1))
            if key not in fields:
                raise ValueError(
                    f"--recipe {spec!r}: {key!r} is not one of {', '.join(fields)} (the recipe's settings)"
                )
            wrong = f"--recipe {spec!r}: {key}={value!r} is not {_ALLOWED[key]}"
            if key in ("schedule", "augment"):
                changes[key] = value
            elif value.lower() == "none":
                changes[key] = None
            else:
                try:
                    changes[key] = int(value) if key in ("epochs", "start_size") else float(value)
                except ValueError:
                    raise ValueError(wrong) from None
            try:
                cls(**{key: changes[key]})  # one setting at a time: the message names it
            except (TypeError, ValueError):
                raise ValueError(wrong) from None
        return dataclasses.replace(base, **changes)

    def describe(self, base: Recipe | None = None) -> str:
        """The settings as "key=value, ..." text (None shown as "the method's" or "full"), only
        those that differ from `base` when it is given (`hashsearch train --help`, docs/models.md)."""
        shown = {"epochs": "the method's", "start_size": "full"}
        before = base.as_dict() if base is not None else {}
        return ", ".join(
            f"{k}={shown[k] if v is None else format(v, 'g') if isinstance(v, float) else v}"
            for k, v in self.as_dict().items()
            if k not in before or before[k] != v
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def size_at(self, epoch: int, epochs: int, full: int) -> int:
        """The training image size of 0-based `epoch` of `epochs`: `full`, or the progressive schedule's (multiple of 8)."""
        if self.start_size is None or self.start_size >= full or epochs < 2:
            return full
        size = self.start_size + (full - self.start_size) * epoch / (epochs - 1)
        return int(min(full, max(32, round(size / 8) * 8)))


#: Named recipes (`Recipe.parse`, `hashsearch train --recipe`). "paper": the finetune mode of
#: `hashsearch bench` (constant rate, crop/flip); "cpu": the recipe measured in
#: benchmarks/results/recipe.md for the 2-core CPU.
RECIPES: dict[str, Recipe] = {
    "paper": Recipe(),
    "cpu": Recipe(schedule="cosine", ema=0.99),
}


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
    augment : bool or str
        One of `AUGMENTATIONS` (True: "crop-flip", False: "none"), in training mode only.
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
        augment: bool | str = True,
        trunk_lr_scale: float = 1.0,
        pretrained: bool = False,
        recipe: Recipe | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk.to(memory_format=torch.channels_last)
        self.head = head
        self.augment = {True: "crop-flip", False: "none"}.get(augment, augment)  # type: ignore[call-overload]
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment={augment!r}: use one of {', '.join(AUGMENTATIONS)}")
        self.recipe = recipe or Recipe()
        self.input_size = int(preprocess.input_size)
        self.train_size: int | None = None  # progressive resizing: this epoch's size (None: full)
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

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch (0-based): sets the progressive image size."""
        self.train_size = None
        if self.recipe.start_size is not None:
            self.train_size = self.recipe.size_at(epoch, epochs, self.input_size)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The trunk's (standardised) features of a uint8 batch, augmented (and resized) in training mode."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        if self.training:
            x = augment_batch(x, self.augment)
            if self.train_size is not None and self.train_size < x.shape[-1]:
                x = nn.functional.interpolate(
                    x, size=(self.train_size, self.train_size), mode="bilinear", antialias=True, align_corners=False
                )
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


def augment_batch(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, 3, s, s) float images in [0, 1], augmented as `kind` names (one of `AUGMENTATIONS`).

    Draws from torch's global RNG (seeded by the training loop).
    """
    if kind == "none":
        return x
    if kind == "crop-flip":
        return random_crop_flip(x)
    return color_jitter(random_resized_crop_flip(x), 0.3)


def random_resized_crop_flip(x: torch.Tensor, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per image: a random window of `scale` of the area and `ratio` aspect, resized back to s x s
    (bilinear), flipped for half of them; one `grid_sample` for the batch."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale)
    log_r = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # window width and height, as fractions of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n) * 2 - 1) * (1 - w)  # centre in [-1, 1] so that the window stays inside
    cy = (torch.rand(n) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = nn.functional.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Per image: brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength]."""
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(1 - strength, 1 + strength).to(x)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).to(x).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return ((x - grey) * factor() + grey).clamp_(0.0, 1.0)


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
    checkpoint: str | os.PathLike | None = None,
    desc: str | None = None,
):
    """Train `backbone`'s network with a softmax classifier on labelled images; write its weights.

    Starts from `backbone.init_module()` (random for `cifar-resnet32`, as the RITQ paper trains
    it; the pretrained weights otherwise), Adam with a cosine learning-rate decay, crop/flip
    augmentation. Returns (the backbone with the trained weights, the `TrainHistory`).

    `checkpoint` (a file, as `trainer.train`'s): written after every epoch; if it exists when
    training starts, training resumes from it and ends as an uninterrupted run would (its
    `TrainHistory.resumed_at` says after which epoch). The caller removes it once the weights
    are kept. `desc` labels the progress bar.
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
        checkpoint=checkpoint,
        desc=desc or f"training {backbone.name} from scratch",
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
    # The one head-mode path, as `fit` (an unsupervised hasher's epochs=None: the epochs its steps make).
    history = hasher._fit_head(X, np.asarray(labels), **loop)
    hasher.n_features_in_ = X.shape[1]
    return hasher, history


__all__ = [
    "AUGMENTATIONS",
    "ImageModel",
    "RECIPES",
    "Recipe",
    "augment_batch",
    "fit_head",
    "TrainHistory",
    "check_pixels",
    "random_crop_flip",
    "train_backbone",
    "trained_backbone",
    "trunk_features",
]
