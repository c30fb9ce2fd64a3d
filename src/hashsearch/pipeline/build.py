"""Build a collection from an image source, add images to one, and encode query images."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from hashsearch.backbones import Backbone
from hashsearch.backbones.extract import extract_features
from hashsearch.collection import Collection
from hashsearch.data.sources import ImageRecord, ImageSource, SkipReport
from hashsearch.hashing import Hasher


@dataclass
class IndexReport:
    """What a build or an add did: counts, skipped files, time per stage."""

    n_indexed: int = 0
    n_cached: int = 0
    n_computed: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines = [
            f"indexed {self.n_indexed} images ({self.n_computed} features computed, "
            f"{self.n_cached} from the cache); {len(self.skipped)} skipped; {t}"
        ]
        if len(self.skipped):
            lines.append(self.skipped.summary())
        return "\n".join(lines)


def build_collection(
    source: ImageSource,
    backbone: Backbone,
    hasher: Hasher,
    *,
    records: Sequence[ImageRecord] | None = None,
    index: str = "flat",
    store_features: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    engine: str = "local",
    **encode,
) -> tuple[Collection, IndexReport]:
    """Extract features of `source`, fit `hasher` on them (unless already fitted), index them.

    A supervised hasher is fitted on the labelled images; the collection holds them all.
    `engine` is "local" (worker processes that decode and encode) or "ray" (Ray Data;
    pass `address=` for a cluster); `encode` goes to the extractor (runtime, int8, workers, ...).
    """
    report = IndexReport()
    t = time.perf_counter()
    ex = _extractor(engine)(source, backbone, records, cache_dir=cache_dir, batch_size=batch_size, progress=progress, **encode)
    report.timings["features"] = time.perf_counter() - t
    report.skipped, report.n_cached, report.n_computed = ex.report, ex.n_cached, ex.n_computed
    if not ex.records:
        raise ValueError(f"no readable image in the source ({len(ex.report)} files skipped)")
    if not hasattr(hasher, "n_features_in_"):
        t = time.perf_counter()
        X, y = ex.features, None
        if hasher.supervised:
            labelled = [i for i, r in enumerate(ex.records) if r.label is not None]
            if not labelled:
                raise ValueError(
                    f"method {hasher.name!r} learns from labels, but the source has none; "
                    "use the one-folder-per-class layout, a list file with labels, or an unsupervised method (itq, lsh, pcah, pca-rr)"
                )
            X = ex.features[labelled]
            y = np.array([ex.records[i].label for i in labelled])
        hasher.fit(X, y)
        report.timings["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    coll = Collection.create(backbone, hasher, index=index, store_features=store_features, int8_model=ex.int8_model)
    coll.add(ex.features, [r.key for r in ex.records], [r.label for r in ex.records], ex.digests)
    report.timings["index"] = time.perf_counter() - t
    report.n_indexed = len(ex.records)
    return coll, report


ENGINES = ("local", "ray")


def _extractor(engine: str):
    """The feature extractor of an engine."""
    if engine == "local":
        return extract_features
    if engine == "ray":
        from hashsearch.pipeline.ray_engine import extract_features_ray

        return extract_features_ray
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def add_images(
    coll: Collection,
    source: ImageSource,
    *,
    records: Sequence[ImageRecord] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, IndexReport]:
    """Encode the images of `source` as the collection's were (`Collection.encoder`: its backbone,
    and its int8 model if it has one) and add them with its hasher."""
    report = IndexReport()
    t = time.perf_counter()
    ex = extract_features(source, coll.backbone, records, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                          encoder=coll.encoder(cache_dir))
    report.timings["features"] = time.perf_counter() - t
    report.skipped, report.n_cached, report.n_computed = ex.report, ex.n_cached, ex.n_computed
    ids = coll.add(ex.features, [r.key for r in ex.records], [r.label for r in ex.records], ex.digests)
    report.n_indexed = len(ids)
    return ids, report


def encode_queries(backbone: Backbone, images: Sequence[Image.Image], encoder=None) -> np.ndarray:
    """Backbone features of decoded query images (not cached: queries are usually one-off).

    `encoder` runs the backbone: a collection's queries take `Collection.encoder()` (ONNX
    Runtime, and the collection's int8 model if it was built with one); default: the PyTorch module.
    """
    if not images:
        return np.zeros((0, backbone.feature_dim), np.float32)
    from hashsearch.backbones.runtime import TorchEncoder

    crops = np.stack([backbone.preprocess.crop(im) for im in images])
    # The collection's own encoding path: uint8 crops in (ONNX normalises them in its graph).
    return (encoder or TorchEncoder(backbone)).encode(crops)
