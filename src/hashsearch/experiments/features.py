"""A split's features from every backbone its methods need, each made once and cached.

`split_features` extracts (or reads from the feature cache) the features of a split's images;
`FeatureProvider` also trains from scratch the backbones that have no pretrained weights (RITQ's
and DHFI's CIFAR ResNet) and fine-tunes a backbone with a deep hasher ("finetune" mode), keeping
the weights in the cache folder so that the next run reads them back. Both trainings checkpoint
every epoch in that folder (`trainer.train`'s checkpoint, named by what the result depends on),
so a killed `hashsearch bench` resumes them where they stopped; the checkpoint is deleted once the
result is kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashsearch.backbones import Backbone
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.protocols import Split
from hashsearch.data.sources import ImageSource, SkipReport
from hashsearch.hashing import hashers
from hashsearch.paths import cache_dir as default_cache_dir
from hashsearch.pipeline.local import extract_features


@dataclass
class Part:
    """One part of a split: features, integer labels, and the records and digests they came from."""

    features: np.ndarray
    labels: np.ndarray
    records: list
    digests: list[str]


@dataclass
class ProtocolFeatures:
    """Features and integer labels of a split's train, query and database parts."""

    train: Part
    query: Part
    database: Part
    classes: list[str]
    skipped: SkipReport = field(default_factory=SkipReport)
    seconds: float = 0.0
    n_images: int = 0
    n_cached: int = 0
    n_computed: int = 0


def split_features(
    source: ImageSource,
    split: Split,
    backbone: Backbone,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ProtocolFeatures:
    """Extract (or read from the cache) the features of every image the split uses, once
    (`max_pixels`: the largest image decoded; larger ones are skipped and reported)."""
    t = time.perf_counter()
    unique = {r.key: r for part in (split.train, split.query, split.database) for r in part}
    ex = extract_features(
        source,
        backbone,
        list(unique.values()),
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        max_pixels=max_pixels,
    )
    row = {r.key: i for i, r in enumerate(ex.records)}
    classes = sorted({r.label for r in unique.values() if r.label is not None})
    code = {c: i for i, c in enumerate(classes)}

    def part(records):
        keep = [row[r.key] for r in records if r.key in row]
        labels = np.array([code[ex.records[i].label] for i in keep], np.int64)
        return Part(ex.features[keep], labels, [ex.records[i] for i in keep], [ex.digests[i] for i in keep])

    return ProtocolFeatures(
        part(split.train),
        part(split.query),
        part(split.database),
        classes,
        ex.report,
        time.perf_counter() - t,
        len(unique),
        ex.n_cached,
        ex.n_computed,
    )


#: Epochs of training a backbone from scratch for the methods that need one (RITQ, DHFI).
SCRATCH_EPOCHS = 15


class FeatureProvider:
    """Features of a split from every backbone the methods ask for (`Hasher.feature_backbones`),
    each made once: None is the run's backbone; a backbone without pretrained weights
    ('cifar-resnet32') is first trained from scratch on the split's labelled training images,
    its weights kept in the cache folder (keyed by split, seed and epochs) for the next run."""

    def __init__(
        self,
        source: ImageSource,
        split: Split,
        backbone: Backbone,
        *,
        cache_dir=None,
        batch_size: int = 64,
        seed: int = 0,
        scratch_epochs: int = SCRATCH_EPOCHS,
        finetune_epochs: int | None = None,
        log=print,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.source, self.split, self.backbone = source, split, backbone
        self.max_pixels = max_pixels
        self.finetune_epochs = finetune_epochs  # joint epochs of finetune mode (None: the hasher's)
        self.cache_dir, self.batch_size, self.seed, self.scratch_epochs, self.log = (
            cache_dir,
            batch_size,
            seed,
            scratch_epochs,
            log,
        )
        self._feats: dict[str | None, ProtocolFeatures] = {}
        #: name -> {"seconds": training time, "loss": per-epoch loss, "weights": path} of backbones trained here.
        self.trained: dict[str, dict] = {}

    def features(self, name: str | None) -> ProtocolFeatures:
        if name not in self._feats:
            backbone = self.backbone if name is None else self.trained_backbone(name)
            self._feats[name] = split_features(
                self.source,
                self.split,
                backbone,
                cache_dir=self.cache_dir,
                batch_size=self.batch_size,
                max_pixels=self.max_pixels,
            )
        return self._feats[name]

    def _stem(self, *parts: str) -> str:
        """A cache file stem from `parts` and the split: filename-safe, and for the user's own data
        (a "custom:<path>" split) with a digest of the training images, since the same path may
        hold other images in another run."""
        import hashlib

        stem = "-".join(parts)
        if self.split.name.startswith("custom:"):
            keys = "\n".join(sorted(f"{r.key}\t{r.label}" for r in self.split.train))
            stem += "-" + hashlib.sha256(keys.encode()).hexdigest()[:10]
        return re.sub(r"[^\w.,=+\[\]-]", "_", stem)

    def trained_backbone(self, name: str) -> Backbone:
        """Backbone `name` trained from scratch on the split's training images (or read from the cache).

        Training writes a checkpoint after every epoch (``<stem>-epochs.ckpt`` beside the
        weights); a run killed part-way resumes from it and ends as an uninterrupted one would,
        and it is deleted once the weights and their record are kept. ``trained[name]`` holds
        the per-epoch loss, the training seconds (summed over a killed run and its resumption)
        and ``resumed_at`` (the epochs read back from a checkpoint; 0: a fresh start).
        """
        import json

        from hashsearch.backbones import create_backbone
        from hashsearch.hashing.deep.endtoend import train_backbone
        from hashsearch.pipeline.local import extract_pixels

        folder = Path(self.cache_dir or default_cache_dir()) / "backbones"
        parts = [name, self.split.name, f"seed{self.split.seed}", f"{self.scratch_epochs}ep"]
        if self.seed != self.split.seed:  # the training's own seed, when it is not the split's
            parts.append(f"train{self.seed}")
        stem = self._stem(*parts)
        weights, info = folder / f"{stem}.pt", folder / f"{stem}.json"
        checkpoint = folder / f"{stem}-epochs.ckpt"
        backbone = create_backbone(name)
        if weights.is_file() and info.is_file():
            self.trained[name] = json.loads(info.read_text())
            return create_backbone(name, weights=weights)
        self.log(
            f"training {name} from scratch on {len(self.split.train)} images, {self.scratch_epochs} epochs"
            + (f" (resuming from the checkpoint {checkpoint})" if checkpoint.is_file() else "")
        )
        records, pixels, report = extract_pixels(
            self.source, self.split.train, backbone.preprocess, max_pixels=self.max_pixels
        )
        trained, history = train_backbone(
            backbone,
            pixels,
            [r.label for r in records],
            weights,
            epochs=self.scratch_epochs,
            seed=self.seed,
            checkpoint=checkpoint,
        )
        self.trained[name] = {
            "seconds": history.seconds,  # summed over a killed run and its resumption
            "loss": history.epoch_loss,
            "weights": str(weights),
            "images": len(records),
            "epochs": self.scratch_epochs,
            "resumed_at": history.resumed_at,
        }
        info.write_text(json.dumps(self.trained[name]))
        checkpoint.unlink(missing_ok=True)  # the weights and their record are kept: nothing left to resume
        resumed = f" (resumed after epoch {history.resumed_at})" if history.resumed_at else ""
        self.log(
            f"trained {name} in {self.trained[name]['seconds']:.0f}s{resumed}, loss {history.epoch_loss[0]:.3f} -> "
            f"{history.epoch_loss[-1]:.3f}"
        )
        return trained

    def finetuned(self, hasher, tag: str) -> tuple:
        """ "finetune" mode: train `hasher` with its backbones (`feature_backbones`: the run's
        backbone, a trained-from-scratch one, or both) on the split's training images, then
        the split's features from the fine-tuned backbones. Returns (fitted hasher, features,
        training seconds). Tuned weights and hasher are kept in the cache folder under `tag`
        and reused.

        Both stages (the head alone, then head and backbone) checkpoint every epoch
        (``<stem>-head.ckpt``, ``<stem>-joint.ckpt``; DHFI: one pair per subnetwork,
        ``-head-a.ckpt`` ...): a run killed part-way resumes from them, its seconds adding to
        the killed run's, and they are deleted once the hasher is kept. The info file beside
        the hasher records ``resumed_at`` per stage (epochs read back; 0: a fresh start)."""
        import hashlib
        import json

        from hashsearch.hashing import Hasher
        from hashsearch.hashing.deep.endtoend import FINETUNE_RECIPE
        from hashsearch.pipeline.local import extract_pixels

        names = type(hasher).feature_backbones
        backbones = [self.backbone if n is None else self.trained_backbone(n) for n in names]
        folder = Path(self.cache_dir or default_cache_dir()) / "backbones"
        parts = [
            self.backbone.cache_key,
            f"ft{FINETUNE_RECIPE}",
            tag,
            f"{self.finetune_epochs}ep",
            self.split.name,
            f"seed{self.split.seed}",
        ]
        if getattr(hasher, "seed", self.split.seed) != self.split.seed:  # the hasher's own seed, when not the split's
            parts.append(f"train{hasher.seed}")
        stem = self._stem(*parts)
        if len(backbones) > 1:  # the other networks' weights are part of what was tuned
            stem += "-" + hashlib.sha256("|".join(b.cache_key for b in backbones[1:]).encode()).hexdigest()[:8]
        weights = [folder / f"{stem}.pt"] if len(names) == 1 else [folder / f"{stem}-{i}.pt" for i in range(len(names))]
        saved, info = folder / f"{stem}.npz", folder / f"{stem}.json"

        def checkpoints(sub: str = "") -> dict[str, Path]:
            return {stage: folder / f"{stem}-{stage}{sub}.ckpt" for stage in ("head", "joint")}

        if saved.is_file() and info.is_file():
            # A network the hasher did not tune (DHFI with one subnetwork in use) has no file.
            tuned = [
                type(b)(weights=w, input_size=b.preprocess.input_size) if w.is_file() else b
                for b, w in zip(backbones, weights)
            ]
            hasher, seconds = Hasher.load(saved), json.loads(info.read_text())["seconds"]
        else:
            crops = [
                extract_pixels(self.source, self.split.train, b.preprocess, max_pixels=self.max_pixels)[:2]
                for b in backbones
            ]
            if any([r.key for r in c[0]] != [r.key for r in crops[0][0]] for c in crops):
                raise RuntimeError(f"the backbones of {tag} read different training images; check the split's files")
            labels = [r.label for r in crops[0][0]]
            pixels = [p for _, p in crops]
            # The epochs each stage runs, as `DeepHasher.finetune` derives them (an unsupervised
            # method's default epochs=None: from the number of training images).
            head_epochs = hasher._epochs_for(len(labels)) if hasattr(hasher, "_epochs_for") else hasher.epochs
            epochs = self.finetune_epochs or head_epochs
            if len(backbones) == 1:
                stages = [checkpoints()]
            else:  # DHFI: its subnetworks' own stages
                from hashsearch.hashing.deep.fusion import _SUBNETS

                stages = [checkpoints(f"-{name}") for name in _SUBNETS]
            earlier = _checkpointed_seconds([p for st in stages for p in st.values()])
            self.log(
                f"fine-tuning {', '.join(b.name for b in backbones)} with {tag} on {len(labels)} "
                f"images: the head alone {head_epochs} epochs, then with the backbone {epochs} epochs"
                + (f" (resuming from the checkpoints in {folder})" if earlier is not None else "")
            )
            t = time.perf_counter()
            if len(backbones) == 1:
                loops = stages[0]
                tuned = [
                    hasher.finetune(
                        backbones[0],
                        pixels[0],
                        labels,
                        weights[0],
                        epochs=epochs,
                        warm_loop={"checkpoint": loops["head"]},
                        loop={"checkpoint": loops["joint"]},
                    )
                ]
                histories = {"": (hasher.head_history_, hasher.joint_history_)}
            else:
                tuned = hasher.finetune(
                    backbones,
                    pixels,
                    labels,
                    weights,
                    epochs=epochs,
                    subnet_options=lambda name, sub, net: {
                        "warm_loop": {"checkpoint": checkpoints(f"-{name}")["head"]},
                        "loop": {"checkpoint": checkpoints(f"-{name}")["joint"]},
                    },
                )
                histories = {
                    f"-{name}": (sub.head_history_, sub.joint_history_) for name, sub in hasher.subnets_.items()
                }
            seconds = time.perf_counter() - t + (earlier or 0.0)
            resumed_at = {
                f"{stage}{sub}": h.resumed_at
                for sub, pair in histories.items()
                for stage, h in zip(("head", "joint"), pair)
            }
            hasher.save(saved)
            info.write_text(
                json.dumps(
                    {"seconds": seconds, "loss": list(map(float, hasher.loss_history_)), "resumed_at": resumed_at}
                )
            )
            for st in stages:  # the hasher and the weights are kept: nothing left to resume
                for p in st.values():
                    p.unlink(missing_ok=True)
            if any(resumed_at.values()):
                said = ", ".join(f"the {k} stage after epoch {v}" for k, v in resumed_at.items() if v)
                self.log(f"fine-tuned with {tag} in {seconds:.0f}s; resumed {said}")
        parts = [
            split_features(
                self.source,
                self.split,
                b,
                cache_dir=self.cache_dir,
                batch_size=self.batch_size,
                max_pixels=self.max_pixels,
            )
            for b in tuned
        ]
        return hasher, parts[0] if len(parts) == 1 else concat_features(parts), seconds

    def for_method(self, method: str) -> tuple[ProtocolFeatures, dict]:
        """The features `method` is defined on (concatenated across its backbones) and the
        parameters that tell it where each block is (`feature_dims`)."""
        names = hashers.get(method).feature_backbones
        parts = [self.features(n) for n in names]
        if len(parts) == 1:
            return parts[0], {}
        return concat_features(parts), {"feature_dims": [p.train.features.shape[1] for p in parts]}


def _checkpointed_seconds(paths: Sequence[Path]) -> float | None:
    """The training seconds that the checkpoints among `paths` hold (a killed run's, which a
    resumed run's time adds to); None when none of them exists."""
    import torch

    found = [p for p in paths if p.is_file()]
    if not found:
        return None
    total = 0.0
    for p in found:
        try:
            total += float(torch.load(p, map_location="cpu", weights_only=True)["history"]["seconds"])
        except Exception:  # a damaged checkpoint: the training loop says so when it reads it
            pass
    return total


def concat_features(parts: Sequence[ProtocolFeatures]) -> ProtocolFeatures:
    """Features of several backbones side by side, for the images all of them could read."""

    def part(name):
        ps = [getattr(p, name) for p in parts]
        common = set.intersection(*(set(x.digests) for x in ps))
        keep = [[i for i, d in enumerate(x.digests) if d in common] for x in ps]
        first = ps[0]
        return Part(
            np.concatenate([x.features[k] for x, k in zip(ps, keep)], axis=1),
            first.labels[keep[0]],
            [first.records[i] for i in keep[0]],
            [first.digests[i] for i in keep[0]],
        )

    base = parts[0]
    return ProtocolFeatures(
        part("train"),
        part("query"),
        part("database"),
        base.classes,
        base.skipped,
        sum(p.seconds for p in parts),
        base.n_images,
        sum(p.n_cached for p in parts),
        sum(p.n_computed for p in parts),
    )
