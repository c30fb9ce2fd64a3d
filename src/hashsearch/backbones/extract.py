"""Image files -> backbone features, batched, cached by content, skipping bad files."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from hashsearch.backbones.base import Backbone
from hashsearch.backbones.cache import FeatureCache, content_digest
from hashsearch.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from hashsearch.data.protocols import cache_dir as default_cache_dir
from hashsearch.data.sources import BadImageWarning, ImageRecord, ImageSource, SkipReport

# Records are read, looked up in the cache and encoded this many at a time.
_CHUNK = 512


@dataclass
class Extracted:
    """Features of the records that decoded, in the order asked for; the bad ones in `report`."""

    records: list[ImageRecord]
    features: np.ndarray
    digests: list[str]
    report: SkipReport = field(default_factory=SkipReport)
    n_cached: int = 0
    n_computed: int = 0


def extract_features(
    source: ImageSource,
    backbone: Backbone,
    records: Sequence[ImageRecord] | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> Extracted:
    """Features of `records` (default: all of `source`), computing only those not cached.

    A file that cannot be read or decoded is skipped with a BadImageWarning naming it and
    listed in the result's `report`; it never stops the run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = list(source.records() if records is None else records)
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone.cache_key, backbone.feature_dim)
    out = Extracted(records=[], features=np.zeros((0, backbone.feature_dim), np.float32), digests=[])
    parts: list[np.ndarray] = []
    bar = tqdm(total=len(records), unit="img", desc=f"features {backbone.cache_key}", disable=not progress or None)
    try:
        stream = source.iter_bytes(records)
        while True:
            chunk = [item for _, item in zip(range(_CHUNK), stream)]
            if not chunk:
                break
            recs, feats, digests = _extract_chunk(chunk, backbone, cache, batch_size, max_pixels, out)
            out.records += recs
            out.digests += digests
            parts.append(feats)
            bar.update(len(chunk))
            bar.set_postfix(cached=out.n_cached, computed=out.n_computed, skipped=len(out.report))
    finally:
        bar.close()
        cache.close()
    if parts:
        out.features = np.concatenate(parts)
    return out


def _extract_chunk(chunk, backbone, cache, batch_size, max_pixels, out: Extracted):
    good: list[tuple[ImageRecord, bytes, str]] = []
    for record, data, error in chunk:
        if error is None and not data:
            error = "empty file"
        if error is not None:
            _skip(out.report, record, error)
            continue
        good.append((record, data, content_digest(data)))
    cached = cache.get_many(sorted({d for _, _, d in good}))
    out.n_cached += sum(d in cached for _, _, d in good)
    # Decode and encode each missing digest once, even if several files share it.
    todo: dict[str, tuple[ImageRecord, bytes]] = {}
    for record, data, digest in good:
        if digest not in cached and digest not in todo:
            todo[digest] = (record, data)
    failed: set[str] = set()
    pending: list[tuple[str, np.ndarray]] = []
    for digest, (record, data) in todo.items():
        try:
            pending.append((digest, backbone.preprocess(decode_image(data, record.key, max_pixels))))
        except DecodeError as e:
            failed.add(digest)
            _skip(out.report, record, e.reason)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        feats = backbone.forward(np.stack([x for _, x in batch]))
        cache.put_many([d for d, _ in batch], feats)
        out.n_computed += len(batch)
        cached.update(zip([d for d, _ in batch], feats))
    kept = [(r, d) for r, _, d in good if d not in failed]
    # A duplicate of a file that failed was reported through its first copy; name it too.
    for r, _, d in good:
        if d in failed and todo[d][0] is not r:
            _skip(out.report, r, "same bytes as a file that failed to decode")
    feats = np.stack([cached[d] for _, d in kept]) if kept else np.zeros((0, backbone.feature_dim), np.float32)
    return [r for r, _ in kept], feats.astype(np.float32, copy=False), [d for _, d in kept]


def _skip(report: SkipReport, record: ImageRecord, reason: str) -> None:
    warnings.warn(f"skipping {record.key}: {reason}", BadImageWarning, stacklevel=3)
    report.add(record.key, reason)
