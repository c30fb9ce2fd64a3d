"""`hashsearch train`: labelled images -> a trained model file (`hashsearch.model.TrainedModel`).

The steps, each a library call: list the labelled images; split off a seeded, per-class
validation set; extract features (head mode, cached) or pixels (finetune mode); train on the one
training loop (`hashing.deep.trainer.train`), scoring every epoch by the validation mAP, keeping
the best epoch, stopping after `patience` epochs without gain, and checkpointing every epoch
under ``<out>.ckpt/`` so that a killed run resumes; save the model and draw its loss/mAP curve.

Validation mAP is mAP@all of each validation image queried against the other validation images
(Hamming ranking, ties broken by index, the query itself left out): cheap enough to compute
after every epoch, and independent of the training images.

Methods that compute their features with networks of their own (`Hasher.feature_backbones`):
RITQ's ResNet-32 and DHFI's second network are first trained from scratch with a classifier on the
training images (`endtoend.train_backbone`, `scratch_epochs`; checkpointed every epoch as
``scratch-<i>-epochs.pt`` and once trained as ``scratch-<i>.pt``, so a killed run resumes in the
middle of their training, and does not train them again once they are done). RITQ's model holds
that ResNet-32 as its backbone (at 32 px, the paper's); DHFI's holds both networks as one
`ConcatBackbone` (the given backbone and a `PooledCifarResNet32` reading the same crops), their
features side by side in that order.

Finetune mode keeps the better of its two stages by validation mAP: the fine-tuned network, or
the head stage's model (the starting network and its head) when fine-tuning ended below it.
The record lists every training and validation image by content (``data.image_digests``), so
that `evaluate_model` warns when a test image is one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hashsearch.backbones import Backbone, ConcatBackbone, create_backbone
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import ImageRecord, ImageSource, SkipReport, plural
from hashsearch.evaluation.metrics import mean_average_precision
from hashsearch.experiments.features import SCRATCH_EPOCHS
from hashsearch.hashing import create_hasher, hashers
from hashsearch.model import TrainedModel

if TYPE_CHECKING:
    from hashsearch.hashing.deep.endtoend import Recipe

#: Training modes: a head on frozen (cached) features, or the backbone trained with the head.
MODES = ("head", "finetune")
#: Version of the run description kept beside a checkpoint: another one is not resumed from.
#: 3: networks trained from scratch (RITQ, DHFI) in the description.
_RUN_VERSION = 3
#: The network trained from scratch that reads a crop of any size beside a pretrained backbone
#: (DHFI): its name in `feature_backbones` -> the backbone that pools the crop down first.
_POOLED = {"cifar-resnet32": "cifar-resnet32-pooled"}


@dataclass
class TrainResult:
    """What `train_model` did, for the command's summary."""

    model: TrainedModel
    out: Path
    curve: Path | None
    resumed_at: int = 0
    notes: list[str] = field(default_factory=list)
    #: finetune mode: the stage ("head" or "joint") that resumed after epoch `resumed_at`; None in head mode.
    resumed_stage: str | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train_model`; its message says which epoch is checkpointed and how to resume."""


def _interrupted(ckpt: Path, out: Path, mode: str) -> str:
    """The message of a training interrupted with `ckpt` as its checkpoint folder."""
    import torch

    stages = (
        (("the joint stage", "joint"), ("the head stage", "head")) if mode == "finetune" else (("training", "head"),)
    )
    # DHFI's subnetworks checkpoint as joint-b.pt, head-a.pt, ...: the last subnetwork first.
    for suffix in ("-b", "-a", ""):
        for stage, name in stages:
            try:
                state = torch.load(ckpt / f"{name}{suffix}.pt", map_location="cpu", weights_only=True)
                done = len(state["history"]["epoch_loss"])
            except Exception:  # not written yet, or cut short
                continue
            sub = f" of subnetwork {suffix[1:]}" if suffix else ""
            return (
                f"interrupted; epoch {done} of {stage}{sub} is checkpointed in {ckpt}: run the same command again to "
                "resume from there (--fresh starts over)"
            )
    for path in sorted(ckpt.glob("scratch-*-epochs.pt"), reverse=True):
        try:
            done = len(torch.load(path, map_location="cpu", weights_only=True)["history"]["epoch_loss"])
        except Exception:  # cut short
            continue
        return (
            f"interrupted; epoch {done} of training the network from scratch is checkpointed in {ckpt}: run the same "
            "command again to resume from there (--fresh starts over)"
        )
    if any(ckpt.glob("scratch-*.pt")):
        return (
            f"interrupted; the network trained from scratch is checkpointed in {ckpt}: run the same command again "
            "to resume from there (--fresh starts over)"
        )
    return f"interrupted before the first epoch was checkpointed: running the command again starts training {out.name} over"


def device_name(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a CUDA device, else 'cpu'; other names unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def split_validation(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, validation) records: `fraction` of each class's images (rounded, at least 1 when the
    class has 2 or more), drawn with `seed`; both lists in the records' order.

    Raises
    ------
    ValueError
        If `fraction` is not in (0, 1), no class has 2 images (nothing to validate on), or no
        class would have 2 validation images (each would be alone: no validation mAP).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    g = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(str(r.label), []).append(i)
    val: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        if len(idx) < 2:
            continue
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.update(int(i) for i in g.choice(idx, size=n, replace=False))
    if not val:
        raise ValueError("no class has 2 labelled images: a validation split needs some; add images")
    held = [sum(i in val for i in idx) for idx in by_class.values()]
    if max(held) < 2:
        # Each validation image would be the only one of its class: no query has a relevant item, and the
        # validation mAP is undefined (NaN) -- no best epoch, nothing to compare fine-tuning against.
        largest = max(len(idx) for idx in by_class.values())
        need = min(0.5, np.ceil(150 / largest) / 100)
        raise ValueError(
            f"--val-fraction {fraction} holds out at most 1 image of each class (the largest has {largest}): a "
            f"validation mAP needs 2 of a class; use --val-fraction {need:g} or more, or add images"
        )
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


def validation_map(bits: np.ndarray, labels: np.ndarray) -> float:
    """mAP@all of each row of `bits` ((n, b) bool) queried against the other rows, relevant when
    labels are equal; NaN when no row has another of its label."""
    b = np.asarray(bits, np.float32) * 2 - 1
    n_bits = b.shape[1]
    d = np.rint((n_bits - b @ b.T) / 2).astype(np.int32)
    labels = np.asarray(labels)
    rel = labels[:, None] == labels[None, :]
    np.fill_diagonal(d, n_bits + 1)  # the query itself: last, and not relevant
    np.fill_diagonal(rel, False)
    return float(mean_average_precision(d, rel).value)


def data_digest(source: ImageSource, records: list[ImageRecord]) -> str:
    """sha256 naming the training data: each image's key below the source root, label and content digest."""
    return _data_digests(source, records)[0]


#: Hex digits of each image's content digest kept in a model's record (``data.image_digests``):
#: 64 bits, so that a chance collision between a 50,000-image training set and a 10,000-image
#: test set has odds of about 3e-11, at 16 bytes of model.json an image.
IMAGE_DIGEST_HEX = 16


def _data_digests(source: ImageSource, records: list[ImageRecord]) -> tuple[str, list[str]]:
    """(`data_digest`, the sorted distinct content digests of the readable images, cut to
    `IMAGE_DIGEST_HEX` hex digits): one read of the images for both."""
    from hashsearch.pipeline.cache import content_digest

    rows, images = [], set()
    for record, data, error in source.iter_bytes(records):
        rel = os.path.relpath(record.key.split("::")[0], source.root) + (
            "::" + record.key.split("::", 1)[1] if "::" in record.key else ""
        )
        digest = "unreadable" if error else content_digest(data)
        if not error:
            images.add(digest[:IMAGE_DIGEST_HEX])
        rows.append(f"{rel}\t{record.label}\t{digest}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest(), sorted(images)


class TrainingDataWarning(UserWarning):
    """`evaluate_model`: some of the test images are images the model was trained or validated on."""


def training_overlap(model: TrainedModel, digests: list[str]) -> int | None:
    """How many of the images of content digests `digests` (`pipeline.cache.content_digest`) the
    model was trained or validated on (its record's ``data.image_digests``); None when the record
    has none (a model trained before records listed them, or built without a training record)."""
    seen = (model.record.get("data") or {}).get("image_digests")
    if not isinstance(seen, list):
        return None
    kept = set(seen)
    return sum(d[:IMAGE_DIGEST_HEX] in kept for d in digests)


def machine() -> dict[str, Any]:
    """Where the training ran: platform, CPU count, torch and hashsearch versions, GPU name if any."""
    import torch

    import hashsearch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hashsearch": hashsearch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _bits_of(model, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """Binary codes ((n, b) bool) of `inputs` through a head or an `ImageModel` (eval mode, no grad)."""
    import torch

    dev = next(model.parameters()).device
    out = [
        (model(torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch])).to(dev)).pre_activation >= 0).cpu().numpy()
        for i in range(0, len(inputs), batch)
    ]
    return np.concatenate(out)


def train_model(
    source: ImageSource,
    out: str | os.PathLike,
    *,
    method: str,
    bits: int,
    backbone: Backbone,
    params: dict[str, Any] | None = None,
    mode: str = "head",
    epochs: int | None = None,
    patience: int | None = 5,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    lr: float | None = None,
    batch_size: int | None = None,
    recipe: Recipe | str | None = None,
    records: list[ImageRecord] | None = None,
    protocol: str | None = None,
    fresh: bool = False,
    cache_dir: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    scratch_epochs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `method` at `bits` on the labelled images of `source` and save the model to `out`.

    Parameters
    ----------
    method : str
        A registered method's name (`hashsearch.hashing.list_hashers`).
    backbone : Backbone
        The starting network; not used by a method whose features all come from networks of its
        own (RITQ).
    params : dict, optional
        The method's own parameters besides n_bits and seed (``{"n_iter": 20}`` for ITQ), as
        a spec's brackets give them (``itq[n_iter=20]``); the training options below
        (`epochs`, `lr`, `batch_size`, `device`), when given, are set after them.
    mode : {"head", "finetune"}
        "head": the hasher learns on the backbone's frozen features (every method). "finetune":
        a deep method's head and loss train the backbone too (`DeepHasher.finetune`; DHFI: each
        subnetwork its own network).
    epochs : int, optional
        Deep methods and DHFI: epochs of training (finetune: of the joint stage; the head alone
        first trains the method's own epochs). Default: the method's.
    patience : int or None
        Deep methods: stop after this many epochs without a better validation mAP (finetune:
        the joint stage; the head-alone stage runs all its epochs and keeps its best one).
    val_fraction, seed : float, int
        The share of each class held out for validation, and the seed of that split and of training.
    device : {"cpu", "cuda", "auto"} or a torch device name
        Where deep methods train ("auto": CUDA when available).
    lr, batch_size : optional
        Override the method's learning rate and batch size.
    recipe : Recipe or str, optional
        Finetune mode: how the joint stage trains (`endtoend.Recipe`, or a spec for
        `Recipe.parse` such as "cpu" or "cpu,epochs=8"); default the "paper" recipe. `epochs`,
        when given, overrides the recipe's.
    records, protocol : optional
        Train on these records of `source` (a protocol's training split) instead of all of
        its images; `protocol` names that protocol in the model's record.
    fresh : bool
        Discard a checkpoint left by an earlier run of the same `out` instead of resuming from it.
    scratch_epochs : int, optional
        RITQ, DHFI: epochs of training their ResNet-32 from scratch (a classifier on the
        training images, `endtoend.train_backbone`); default `SCRATCH_EPOCHS` (15), as
        `hashsearch bench` trains it.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        An unknown method or mode, finetune mode for a method that cannot train a backbone,
        fewer than 2 classes, a checkpoint left by a different training (use `fresh`).
    """
    from hashsearch.hashing.deep.base import DeepHasher

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    recipe = check_recipe(recipe, method, mode)
    cls = hashers.get(method)
    nets = tuple(cls.feature_backbones)
    scratch = [n for n in nets if n is not None]
    hasher = create_hasher(method, n_bits=bits, seed=seed, **(params or {}))
    deep = isinstance(hasher, DeepHasher)
    if mode == "finetune" and not (deep or hasattr(hasher, "finetune")):
        why = f"; {method} trains its own network ({', '.join(scratch)}) from scratch in head mode" if scratch else ""
        raise ValueError(
            f"--mode finetune trains the backbone through a deep method's loss, and {method} is not one{why}; use "
            f"one of {', '.join(_deep_methods())}, or --mode head"
        )
    scratch_epochs = SCRATCH_EPOCHS if scratch_epochs is None else scratch_epochs
    if not isinstance(scratch_epochs, int) or scratch_epochs < 1:
        raise ValueError(f"--scratch-epochs must be a positive integer, got {scratch_epochs!r}")
    dev = device_name(device)
    # Training settings are plain attributes of a DeepHasher or of DHFI (and part of their saved parameters).
    trains = deep or all(hasattr(hasher, k) for k in ("device", "lr", "batch_size", "epochs"))
    if trains:
        hasher.device = dev
        if lr is not None:
            hasher.lr = lr
        if batch_size is not None:
            hasher.batch_size = batch_size
        if epochs is not None and mode == "head":
            hasher.epochs = epochs

    out = Path(out)
    if records is None:
        records = source.records()
        _log_listing(source, log)
    else:
        records = list(records)
    labelled = [r for r in records if r.label is not None]
    classes = sorted({str(r.label) for r in labelled})
    have = (
        f"{len(labelled):,} of the {plural(len(records), 'image')} {'has' if len(labelled) == 1 else 'have'} a "
        f"label ({plural(len(classes), 'class', 'classes')}{': ' + classes[0] if len(classes) == 1 else ''})"
    )
    if scratch and len(classes) < 2:
        raise ValueError(
            f"{have}; {method} trains its network ({', '.join(scratch)}) from scratch with a classifier, on labels "
            "of at least 2 classes (class folders, or --labels)"
        )
    if len(classes) < 2 and hasher.supervised:
        raise ValueError(f"{have}; {method} learns from labels of at least 2 classes (class folders, or --labels)")
    if len(classes) < 2:
        # An unsupervised method on unlabelled images: it fits on all of them, with nothing to validate on.
        labelled = records
        train_recs, val_recs = records, []
        why = f"one class ({classes[0]}), nothing to tell apart" if classes else "no labels"
        log(f"{why}: {method} fits on all {plural(len(records), 'image')}, without a validation mAP")
    else:
        train_recs, val_recs = split_validation(labelled, val_fraction, seed)
    t_start = time.perf_counter()
    if val_recs:
        log(
            f"{len(train_recs)} training and {len(val_recs)} validation images, {len({r.label for r in labelled})} classes"
        )
    digest, image_digests = _data_digests(source, labelled)

    if trains or scratch:
        from hashsearch.hashing.deep.trainer import resolve_device

        resolve_device(dev)  # a device that is not here fails now, before a checkpoint exists
    # The device is not part of the run's identity: a run killed on one device may resume on another
    # (the checkpoint is read to the CPU, then moved); results agree to float rounding.
    run = {
        "version": _RUN_VERSION,
        "method": method,
        "params": {k: v for k, v in hasher.get_params().items() if k != "device"},
        "mode": mode,
        "epochs": epochs,
        "patience": patience,
        "val_fraction": val_fraction,
        "backbone": backbone.config() | {"weights": None} if None in nets else None,
        "scratch": {"networks": scratch, "epochs": scratch_epochs} if scratch else None,
        "data": digest,
        "recipe": recipe.as_dict(),
    }
    ckpt = out.with_name(out.name + ".ckpt")
    _prepare_checkpoint(ckpt, run, fresh, log)

    record: dict[str, Any] = {
        "method": method,
        "params": hasher.get_params(),
        "mode": mode,
        "backbone": (
            {"name": backbone.name, "input_size": backbone.preprocess.input_size, "start": backbone.config()}
            if None in nets
            else None
        ),
        "data": {
            "source": source.root,
            "digest": digest,
            "images": len(labelled),
            "train": len(train_recs),
            "validation": len(val_recs),
            "classes": sorted({str(r.label) for r in labelled if r.label is not None}),
            "split": {"val_fraction": val_fraction, "seed": seed},
            # Every training and validation image, by content: `eval --model` warns when a test image is one.
            "image_digests": image_digests,
        },
        "protocol": protocol,
        "device": dev,
        "machine": machine(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    notes: list[str] = []
    resumed_at = 0
    resumed_stage = None

    try:
        if scratch:
            parts = _networks(
                nets, backbone, source, train_recs, ckpt, scratch_epochs, seed, dev, max_pixels, progress, record, log
            )
            backbone = parts[0] if len(parts) == 1 else ConcatBackbone(parts)
            if record["backbone"] is None:  # RITQ: its own network is the model's backbone
                record["backbone"] = {"name": backbone.name, "input_size": backbone.preprocess.input_size}
        if hasattr(hasher, "feature_dims") and isinstance(backbone, ConcatBackbone):
            hasher.feature_dims = list(backbone.feature_dims)  # DHFI: where each network's columns are
        if mode == "head":
            from hashsearch.pipeline.local import extract_features

            ex = extract_features(
                source, backbone, train_recs + val_recs, cache_dir=cache_dir, max_pixels=max_pixels, progress=progress
            )
            keys = {r.key: i for i, r in enumerate(ex.records)}
            tr = [keys[r.key] for r in train_recs if r.key in keys]
            va = [keys[r.key] for r in val_recs if r.key in keys]
            X, y = ex.features[tr], np.array([ex.records[i].label for i in tr])
            Xv, yv = ex.features[va], np.array([ex.records[i].label for i in va])
            if deep:
                from hashsearch.hashing.deep.endtoend import fit_head

                def validate(head) -> float:
                    return validation_map(
                        _bits_of(head, hasher.standardize(np.asarray(Xv, np.float32), _checked=True)), yv
                    )

                _, history = fit_head(
                    hasher,
                    X,
                    y,
                    validate=validate if len(va) else None,
                    patience=patience if len(va) else None,
                    checkpoint=ckpt / "head.pt",
                    desc=f"training {method}",
                    progress=progress,
                )
                resumed_at = history.resumed_at
                record["epochs"] = _epochs(history)
            else:
                t = time.perf_counter()
                hasher.fit(X, y if hasher.supervised else None)
                scores = [validation_map(_unpack(hasher.encode(Xv)), yv)] if len(Xv) else []
                record["epochs"] = {"loss": [], "val_map": scores, "best_epoch": None, "stopped_early": False}
                record["fit_seconds"] = time.perf_counter() - t
            record["val_map"] = max(record["epochs"]["val_map"], default=None)
            tuned = backbone
        else:
            from hashsearch.pipeline.local import extract_pixels

            # (an image that cannot be read or decoded is named by a warning as it is skipped)
            kept, pixels, _ = extract_pixels(
                source, train_recs, backbone.preprocess, max_pixels=max_pixels, progress=progress
            )
            vkept, vpixels, _ = extract_pixels(
                source, val_recs, backbone.preprocess, max_pixels=max_pixels, progress=progress
            )
            labels = np.array([r.label for r in kept])
            yv = np.array([r.label for r in vkept])

            def loops(net: Backbone, sub, suffix: str = "", what: str = "") -> dict[str, dict]:
                """The two stages' loop options of `sub` fine-tuning `net` (DHFI: per subnetwork, `suffix` "-a")."""
                validate = _validator(net, sub, vpixels, yv, dev) if len(vkept) else None
                return {
                    # The head stage runs all its epochs and keeps its best: it costs seconds, and stopping it by
                    # `patience` on a small validation set's noisy mAP left a weaker head for the joint stage to
                    # start from (docs/models.md, "The head stage runs all its epochs").
                    "warm_loop": {
                        "validate": validate,
                        "patience": None,
                        "checkpoint": ckpt / f"head{suffix}.pt",
                        "desc": f"training the {method} head{what}",
                    },
                    "loop": {
                        "validate": validate,
                        "patience": patience if validate else None,
                        "checkpoint": ckpt / f"joint{suffix}.pt",
                        "desc": f"fine-tuning {net.name} with {method}{what}",
                    },
                }

            if isinstance(backbone, ConcatBackbone):  # DHFI: each subnetwork fine-tunes its own network
                n = len(backbone.parts)
                tuned_parts = hasher.finetune(
                    list(backbone.parts),
                    [pixels] * n,  # one crop for all: the parts differ in normalisation only
                    labels,
                    [ckpt / f"backbone-{i}.pt" for i in range(n)],
                    epochs=epochs,
                    recipe=recipe,
                    progress=progress,
                    subnet_options=lambda name, sub, net: loops(net, sub, f"-{name}", f" (subnetwork {name})"),
                )
                subs = {name: (sub.head_history_, sub.joint_history_) for name, sub in hasher.subnets_.items()}
                record["subnets"] = {
                    name: {"head_stage": _epochs(warm), "epochs": _epochs(joint), "kept": "joint"}
                    for name, (warm, joint) in subs.items()
                }
                from hashsearch.hashing.deep.fusion import _SUBNETS

                for name, sub in hasher.subnets_.items():
                    head_best, joint_best = (max(h.val_score, default=None) for h in subs[name])
                    if head_best is not None and joint_best is not None and head_best > joint_best:
                        # As for one network: this subnetwork's fine-tuning ended below its head stage; keep that.
                        i = _SUBNETS.index(name)
                        tuned_parts[i], sub.head_state_ = backbone.parts[i], sub.head_stage_state_
                        record["subnets"][name]["kept"] = "head"
                tuned = ConcatBackbone(tuned_parts)
                # The fused code's validation mAP, through the fine-tuned networks as a model encodes.
                record["epochs"] = {"loss": [], "val_map": [], "best_epoch": None, "stopped_early": False}
                record["val_map"] = _fused_val_map(tuned, hasher, vpixels, yv) if len(vkept) else None
                resumed_at, resumed_stage = 0, None
                for name, (warm, joint) in subs.items():
                    if joint.resumed_at or warm.resumed_at:
                        resumed_at = joint.resumed_at or warm.resumed_at
                        resumed_stage = f"{'joint' if joint.resumed_at else 'head'} (subnetwork {name})"
            else:
                tuned = hasher.finetune(
                    backbone,
                    pixels,
                    labels,
                    ckpt / "backbone.pt",
                    epochs=epochs,
                    recipe=recipe,
                    progress=progress,
                    **loops(backbone, hasher),
                )
                warm, joint = hasher.head_history_, hasher.joint_history_
                resumed_at = joint.resumed_at or warm.resumed_at
                resumed_stage = ("joint" if joint.resumed_at else "head") if resumed_at else None
                # The head alone on the starting backbone's frozen features: what fine-tuning is measured against.
                record["head_stage"] = _epochs(warm)
                record["frozen_val_map"] = max(warm.val_score, default=None)
                record["epochs"] = _epochs(joint)
                record["val_map"] = max(joint.val_score, default=None)
                record["kept"] = "joint"
                if (
                    record["frozen_val_map"] is not None
                    and record["val_map"] is not None
                    and record["frozen_val_map"] > record["val_map"]
                ):
                    # Fine-tuning ended below the head on the starting network: keep that one, the better model.
                    hasher.head_state_ = hasher.head_stage_state_
                    tuned = backbone
                    record["kept"] = "head"
                    record["val_map"] = record["frozen_val_map"]
            record["recipe"] = recipe.as_dict()
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(ckpt, out, mode)) from None
    except FloatingPointError as e:  # the loss diverged: the rates the user chose, not a bug
        trunk = (
            f" (the backbone's: --lr x --recipe trunk_lr_scale={recipe.trunk_lr_scale:g})" if mode == "finetune" else ""
        )
        raise ValueError(f"{str(e).split(';')[0]}: training diverged; lower --lr{trunk}") from None
    finally:
        if not any(ckpt.glob("*.pt")):
            # Nothing trained: no checkpoint, so that a corrected command is not taken for another run.
            shutil.rmtree(ckpt, ignore_errors=True)
    if deep:
        # The hasher's `epochs` as run (the joint stage's in finetune mode, the head stage's when
        # that one is kept), not the method's default.
        hasher.epochs = len(record["head_stage" if record.get("kept") == "head" else "epochs"]["loss"])
    record["params"] = hasher.get_params()  # DHFI: with the widths of its networks' features
    record["seconds"] = time.perf_counter() - t_start
    record["train_seconds"] = float(getattr(hasher, "train_seconds_", 0.0) or 0.0)
    model = TrainedModel.from_trained(tuned, hasher, record)
    model.save(out)
    curve = write_curve(model, out.with_name(out.stem + "-training.png"))
    if curve is None:
        out.with_name(out.stem + "-training.png").unlink(missing_ok=True)  # an earlier run's, not this one's
    shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(model, out, curve, resumed_at, notes, resumed_stage)


def _check_overlap(model: TrainedModel, name: str, root: str, feats, log: Callable[[str], None]) -> dict | None:
    """Count the split's query and database images the model was trained or validated on; warn
    (`TrainingDataWarning`, one line naming up to 3 of the queries below `root`) when a query is
    one. None when the record cannot say."""
    import warnings

    queries = training_overlap(model, feats.query.digests)
    if queries is None:
        log(
            "the model's record lists no training images (a model trained by an earlier hashsearch): whether the "
            "test images were among them is not checked"
        )
        return None
    database = training_overlap(model, feats.database.digests)
    if queries:
        seen = set((model.record.get("data") or {}).get("image_digests") or [])
        keys = [
            os.path.relpath(r.key, root) if "::" not in r.key else r.key.split("::", 1)[1]
            for r, d in zip(feats.query.records, feats.query.digests)
            if d[:IMAGE_DIGEST_HEX] in seen
        ]
        named = ", ".join(keys[:3]) + (f" and {len(keys) - 3:,} more" if len(keys) > 3 else "")
        n = len(feats.query.digests)
        warnings.warn(
            f"{queries:,} of the {n:,} query images of {name} {'is an image' if queries == 1 else 'are images'} "
            f"model {model.id[:12]} was trained or validated on (the same bytes: {named}): the mAP below does not "
            "measure unseen images; evaluate on a protocol or --data whose queries it has not seen, or train it "
            "without them",
            TrainingDataWarning,
            stacklevel=3,
        )
    return {"queries": queries, "database": database}


def _overlap_note(overlap: dict | None, n_queries: int, n_database: int) -> str:
    """The results file's line on the test images the model was trained on."""
    if overlap is None:
        return "Overlap with the training images: not checked (the model's record does not list them)."
    return (
        f"Overlap with the model's training and validation images: {overlap['queries']:,} of {n_queries:,} "
        f"queries, {overlap['database']:,} of {n_database:,} database images (the database of a protocol "
        "usually holds its training split)."
    )


def check_recipe(recipe: Recipe | str | None, method: str, mode: str) -> Recipe:
    """`recipe` (a `Recipe`, a `Recipe.parse` spec, or None: "paper") checked against `method` and
    `mode` before any data is read.

    Raises
    ------
    ValueError
        A spec `Recipe.parse` refuses (an empty one too); a recipe other than "paper" outside
        finetune mode; label smoothing for a method whose loss has no class targets.
    """
    from hashsearch.hashing.deep.endtoend import Recipe
    from hashsearch.hashing.deep.losses import losses

    recipe = Recipe.parse(recipe) if isinstance(recipe, str) else (recipe or Recipe())
    if mode != "finetune" and recipe != Recipe():
        raise ValueError(f"--recipe sets how finetune mode trains the backbone; with --mode {mode} leave it out")
    hasher = create_hasher(method, n_bits=16)
    if recipe.label_smoothing and hasattr(hasher, "finetune"):  # (finetune mode for other methods is refused apart)
        loss = getattr(hasher, "loss", None)
        if loss is None or not hasattr(losses.get(loss), "label_smoothing"):
            smooth = [
                m for m in _deep_methods() if hasattr(losses.get(create_hasher(m, n_bits=16).loss), "label_smoothing")
            ]
            raise ValueError(
                f"--recipe label_smoothing={recipe.label_smoothing}: --method {method}'s loss has no class targets to "
                f"smooth; use it with {', '.join(smooth)} (their losses have class targets), or leave it at 0"
            )
    return recipe


def _validator(net: Backbone, sub, vpixels: np.ndarray, yv: np.ndarray, dev: str) -> Callable[[Any], float]:
    """Validation mAP of a finetune stage's model: the joint stage's `ImageModel` on the validation
    crops, or the head alone on `net`'s starting (frozen) features of them, standardised by `sub`."""
    from hashsearch.hashing.deep.endtoend import ImageModel, trunk_features

    frozen: dict[str, np.ndarray] = {}

    def validate(model) -> float:
        if isinstance(model, ImageModel):
            return validation_map(_bits_of(model, vpixels), yv)
        if "X" not in frozen:  # the starting network's validation features, for the head-alone stage
            from hashsearch.hashing.deep.trainer import resolve_device

            frozen["X"] = trunk_features(net.init_module(), vpixels, net.preprocess, resolve_device(dev))
        return validation_map(_bits_of(model, sub.standardize(frozen["X"], _checked=True)), yv)

    return validate


def _fused_val_map(backbone: Backbone, hasher, vpixels: np.ndarray, yv: np.ndarray, batch: int = 64) -> float:
    """Validation mAP of `hasher`'s codes of `backbone`'s features (PyTorch) of the validation crops."""
    feats = np.concatenate(
        [backbone.forward(backbone.preprocess.normalize(vpixels[i : i + batch])) for i in range(0, len(vpixels), batch)]
    )
    return validation_map(_unpack(hasher.encode(feats)), yv)


def _networks(
    nets: tuple[str | None, ...],
    backbone: Backbone,
    source: ImageSource,
    train_recs: list[ImageRecord],
    ckpt: Path,
    epochs: int,
    seed: int,
    dev: str,
    max_pixels: int,
    progress: bool,
    record: dict[str, Any],
    log: Callable[[str], None],
) -> list[Backbone]:
    """The networks of `feature_backbones` `nets`: None is `backbone`; a name is that network
    trained from scratch on `train_recs` (`endtoend.train_backbone`, `epochs`), its weights kept
    as ``ckpt/scratch-<i>.pt`` (a resumed run reads them instead of training again). Beside
    `backbone` it reads the same crops (`_POOLED`); alone, at its own input size. Each trained
    network's loss and seconds go to ``record["scratch"]``."""
    from hashsearch.hashing.deep.endtoend import train_backbone
    from hashsearch.pipeline.local import extract_pixels

    out: list[Backbone] = []
    record["scratch"] = {}
    for i, name in enumerate(nets):
        if name is None:
            out.append(backbone)
            continue
        try:
            net = (
                create_backbone(name)
                if len(nets) == 1
                else create_backbone(_POOLED.get(name, name), input_size=backbone.preprocess.input_size)
            )
        except ValueError as e:
            raise ValueError(
                f"--input-size {backbone.preprocess.input_size}: the network trained from scratch ({name}) reads the "
                f"same crops as {backbone.name}, and {e}; choose another --input-size"
            ) from None
        weights, info = ckpt / f"scratch-{i}.pt", ckpt / f"scratch-{i}.json"
        # The epochs of training it: a killed run resumes there (`trainer.train`'s checkpoint).
        epochs_ckpt = ckpt / f"scratch-{i}-epochs.pt"
        if weights.is_file() and info.is_file():
            log(f"{net.name}: read the network trained from scratch from {weights} (--fresh trains it again)")
            done = json.loads(info.read_text())
            out.append(type(net)(weights=weights, input_size=net.preprocess.input_size))  # type: ignore[call-arg]
        else:
            kept, pixels, _ = extract_pixels(
                source, train_recs, net.preprocess, max_pixels=max_pixels, progress=progress
            )
            log(f"training {net.name} from scratch on {len(kept)} images, {plural(epochs, 'epoch')}")
            trained, history = train_backbone(
                net,
                pixels,
                [r.label for r in kept],
                weights,
                epochs=epochs,
                seed=seed,
                device=dev,
                progress=progress,
                checkpoint=epochs_ckpt,
            )
            done = {
                "loss": [float(v) for v in history.epoch_loss],
                "seconds": history.seconds,  # summed over a killed run and its resumption
                "images": len(kept),
                "resumed_at": history.resumed_at,
            }
            info.write_text(json.dumps(done))
            epochs_ckpt.unlink(missing_ok=True)  # the weights and their record are kept: nothing left to resume
            out.append(trained)
        record["scratch"][out[-1].name] = {"epochs": epochs, "input_size": out[-1].preprocess.input_size, **done}
    return out


def _log_listing(source: ImageSource, log: Callable[[str], None]) -> None:
    """Say how the labels were read and which files were left out, as `hashsearch index` does
    (an image that cannot be read or decoded is named by a warning when it is skipped)."""
    listing = source.listing()
    log(listing.labels.summary())
    if listing.left_out():
        log(listing.left_out())
    if listing.problems:
        log(SkipReport(list(listing.problems)).summary())


def _deep_methods() -> list[str]:
    from hashsearch.hashing.deep.presets import Preset

    return [m for m in hashers.names() if isinstance(hashers.get(m), Preset)]


def _epochs(history) -> dict[str, Any]:
    return {
        "loss": [float(v) for v in history.epoch_loss],
        "val_map": [float(v) for v in history.val_score],
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "resumed_at": history.resumed_at,
        "seconds": history.seconds,
    }


def _unpack(codes) -> np.ndarray:
    from hashsearch.codes import unpack_bits

    return unpack_bits(codes).astype(bool)


def _prepare_checkpoint(ckpt: Path, run: dict, fresh: bool, log: Callable[[str], None]) -> bool:
    """Make `ckpt` the checkpoint folder of `run`; True when it holds an earlier run's epochs to resume."""
    desc = ckpt / "run.json"
    if ckpt.exists() and fresh:
        shutil.rmtree(ckpt)
        log(f"--fresh: removed the checkpoint {ckpt}")
    if desc.is_file():
        try:
            before = json.loads(desc.read_text())
        except ValueError:
            before = None
        if before != json.loads(json.dumps(run, default=str)):
            raise ValueError(
                f"{ckpt} holds the checkpoint of a different training (other method, settings or data); "
                "run with --fresh to discard it, or choose another --out"
            )
        done = sorted(p.name for p in ckpt.glob("*.pt") if not p.name.startswith("backbone"))
        if done:
            log(
                f"resuming from the checkpoint in {ckpt} (finished stages and epochs are not run again; --fresh starts over)"
            )
            return True
        return False
    ckpt.mkdir(parents=True, exist_ok=True)
    desc.write_text(json.dumps(run, default=str, indent=1))
    return False


def write_curve(model: TrainedModel, out_png: str | os.PathLike) -> Path | None:
    """The training loss and validation mAP by epoch as a PNG, with a marker on every epoch;
    finetune mode: the head stage's epochs, then the joint stage's. None (nothing written) when
    there are fewer than 2 epochs to draw (classic methods; a 1-epoch run: one point is no curve).
    """
    r = model.record
    epochs = r.get("epochs") or {}
    head = (r.get("head_stage") or {}) if r.get("mode") == "finetune" else {}
    stages = [(st.get("loss") or [], st.get("val_map") or [], st.get("best_epoch")) for st in (head, epochs)]
    loss = stages[0][0] + stages[1][0]
    if len(loss) < 2:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    n_head = len(stages[0][0])
    for i, (sl, _, _) in enumerate(stages):  # each stage its own line: the joint stage's loss is of augmented images
        x0 = n_head if i == 1 else 0
        ax.plot(np.arange(x0 + 1, x0 + len(sl) + 1), sl, color="tab:blue", marker="o", ms=3)
    ax.set_xlabel("epoch (head stage, then fine-tuning)" if n_head else "epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    if n_head:
        ax.axvline(n_head + 0.5, color="grey", ls="--", lw=1)
    if stages[0][1] or stages[1][1]:
        ax2 = ax.twinx()
        kept_stage = 0 if r.get("kept") == "head" else 1
        for i, (_, vmap, best) in enumerate(stages):
            if not vmap:
                continue
            x0 = n_head if i == 1 else 0
            ax2.plot(np.arange(x0 + 1, x0 + len(vmap) + 1), vmap, color="tab:red", marker="s", ms=3)
            if best and i == kept_stage:
                ax2.axvline(x0 + best, color="grey", ls=":", lw=1)
                ax2.annotate(f"kept {vmap[best - 1]:.3f}", (x0 + best, vmap[best - 1]), fontsize=8)
        ax2.set_ylabel("validation mAP", color="tab:red")
    ax.set_title(f"{r.get('method')} {model.n_bits} bits, {r.get('mode')} mode, {model.backbone_name}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    return out_png


def evaluate_model(
    model: TrainedModel,
    *,
    protocol: str | None,
    data: str | None,
    queries_per_class: int | None,
    seed: int,
    out: Path | None,
    cache_dir=None,
    batch_size: int = 64,
    command: str = "",
    labels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    log: Callable[[str], None] = print,
) -> dict:
    """`hashsearch eval --model`: the model's codes on a protocol's (or a folder's) queries and
    database, nothing fitted; returns the result row (`evaluate`'s metrics) and writes
    <out>.md/.json when `out` is given.

    The protocol's training images are not used, and `data` is split into queries and database
    only (`load_split` with no training images: `queries_per_class` per class, None for its
    automatic count), every image that is not a query in the database. If the model was trained
    on images that are also in the database, the record's data digest says what it saw (the
    numbers are then those of the protocol's usual setting, in which the training set is part of
    the database).
    """
    from hashsearch.evaluation.metrics import evaluate
    from hashsearch.evaluation.report import machine_description, write_results
    from hashsearch.experiments.features import split_features
    from hashsearch.experiments.jobs import load_split
    from hashsearch.experiments.runner import own_items

    t0 = time.perf_counter()
    source, split = load_split(protocol, data, queries_per_class, 0, seed, labels=labels, log=log)
    log(
        f"{split.name} (seed {split.seed}): {plural(len(split.query), 'query', 'queries')}, "
        f"{plural(len(split.database), 'database image')}"
        + (
            f"; its {plural(len(split.train), 'training image')} are not used (the model is trained)"
            if split.train
            else ""
        )
    )
    backbone = model.backbone(cache_dir)
    feats = split_features(source, split, backbone, cache_dir=cache_dir, batch_size=batch_size, max_pixels=max_pixels)
    overlap = _check_overlap(model, split.name, source.root, feats, log)
    unseen, n_trained = model.unseen_classes(r.label for r in split.query)
    if unseen:  # a low score then says less about the model than about what it never saw
        shown = ", ".join(unseen[:6]) + (f" and {len(unseen) - 6:,} more" if len(unseen) > 6 else "")
        log(
            f"note: {plural(len(unseen), 'class', 'classes')} of the queries ({shown}) "
            f"{'is' if len(unseen) == 1 else 'are'} not among the {n_trained:,} the model was trained on: "
            "its codes of classes it never saw rank less well (benchmarks/results/unseen-classes.md)"
        )
    t1 = time.perf_counter()
    qc, dc = model.hasher.encode(feats.query.features), model.hasher.encode(feats.database.features)
    exclude = own_items(feats.query, feats.database) if split.leave_one_out else None  # the MNIST protocols
    metrics = evaluate(qc, dc, feats.query.labels, feats.database.labels, exclude=exclude)
    row = {
        "method": f"{model.hasher.name} (model {model.id[:12]})",
        "mode": model.record.get("mode", "model"),
        "bits": model.n_bits,
        "metrics": metrics,
        "timings": {"fit_s": 0.0, "encode_s": time.perf_counter() - t1, "eval_s": 0.0},
        "params": model.hasher.get_params(),
        "model": {
            "id": model.id,
            "file": str(model.path),
            "val_map": model.record.get("val_map"),
            "training_overlap": overlap,
        },
    }
    log(f"{model.describe()}: mAP {metrics['map']:.4f}  tie-aware {metrics['map_tie_aware']:.4f}")
    if out is not None:
        notes = "\n".join(
            [
                f"Command: `{command}`" if command else "",
                f"Protocol: {split.name} (seed {split.seed}): {split.description}",
                f"Model: {model.path} ({model.describe()}), trained on {model.record.get('data', {}).get('source')}.",
                _overlap_note(overlap, len(feats.query.digests), len(feats.database.digests)),
                f"Machine: {machine_description()}. Total wall time {time.perf_counter() - t0:.0f}s.",
            ]
        )
        write_results([row], out, title=f"A trained model on {split.name}", notes=notes)
        log(f"wrote {out}.md and {out}.json")
    return row
