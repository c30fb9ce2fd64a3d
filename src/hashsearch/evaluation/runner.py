"""Run a named protocol: features once (cached), then fit, encode and evaluate each method x bits."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hashsearch.backbones import Backbone
from hashsearch.backbones.extract import extract_features
from hashsearch.data.protocols import Split
from hashsearch.data.sources import ImageSource, SkipReport
from hashsearch.evaluation.metrics import evaluate
from hashsearch.hashing import create_hasher


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
) -> ProtocolFeatures:
    """Extract (or read from the cache) the features of every image the split uses, once."""
    t = time.perf_counter()
    unique = {r.key: r for part in (split.train, split.query, split.database) for r in part}
    ex = extract_features(source, backbone, list(unique.values()), cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    row = {r.key: i for i, r in enumerate(ex.records)}
    classes = sorted({r.label for r in unique.values() if r.label is not None})
    code = {c: i for i, c in enumerate(classes)}

    def part(records):
        keep = [row[r.key] for r in records if r.key in row]
        labels = np.array([code[ex.records[i].label] for i in keep], np.int64)
        return Part(ex.features[keep], labels, [ex.records[i] for i in keep], [ex.digests[i] for i in keep])

    return ProtocolFeatures(
        part(split.train), part(split.query), part(split.database), classes, ex.report,
        time.perf_counter() - t, len(unique), ex.n_cached, ex.n_computed,
    )


def run_methods(
    feats: ProtocolFeatures,
    methods: Sequence[str],
    bits: Sequence[int],
    *,
    seed: int = 0,
    params: dict[str, dict] | None = None,
    ks: Sequence[int] = (100, 1000),
    radius: int = 2,
    log=print,
) -> list[dict]:
    """One result row per (method, bits): the metrics of `evaluate` and the time of each stage."""
    rows = []
    Xt, yt = feats.train.features, feats.train.labels
    Xq, yq = feats.query.features, feats.query.labels
    Xd, yd = feats.database.features, feats.database.labels
    for method in methods:
        for b in bits:
            hasher = create_hasher(method, n_bits=b, seed=seed, **(params or {}).get(method, {}))
            t0 = time.perf_counter()
            hasher.fit(Xt, yt if hasher.supervised else None)
            t1 = time.perf_counter()
            qc, dc = hasher.encode(Xq), hasher.encode(Xd)
            t2 = time.perf_counter()
            metrics = evaluate(qc, dc, yq, yd, ks=ks, radius=radius)
            t3 = time.perf_counter()
            rows.append({
                "method": method,
                "bits": b,
                "metrics": metrics,
                "timings": {"fit_s": t1 - t0, "encode_s": t2 - t1, "eval_s": t3 - t2},
                "params": hasher.get_params(),
            })
            log(f"{method:>8} {b:>3} bits  mAP {metrics['map']:.4f}  tie-aware {metrics['map_tie_aware']:.4f}  "
                f"fit {t1 - t0:.1f}s encode {t2 - t1:.1f}s eval {t3 - t2:.1f}s")
    return rows


def machine_description() -> str:
    """What the numbers were measured on, for result files."""
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, no GPU used"
