"""Image files -> backbone features, batched, cached by content, skipping bad files.

Decoding runs in worker processes (`workers`), and with ONNX Runtime (the default runtime, see
`hashsearch.backbones.runtime`; int8 with `int8=True`) so does inference: each worker decodes a
batch and encodes it on one thread, while this process reads the files, looks them up in the
cache and stores the features. A bounded queue of batches keeps memory flat whatever the
collection size. Every batch is committed to the feature cache as it is made, so an interrupted run
resumes without recomputing anything finished.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from hashsearch.backbones.base import Backbone
from hashsearch.backbones.cache import FeatureCache, content_digest
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.paths import cache_dir as default_cache_dir
from hashsearch.data.sources import BadImageWarning, ImageRecord, ImageSource, SkipReport, printable

# Records are read, looked up in the cache and encoded this many at a time, or fewer: a chunk
# ends once its files hold _CHUNK_BYTES, so that large photos do not fill memory.
_CHUNK = 512
_CHUNK_BYTES = 64 * 2**20
# Chunks decoded ahead of inference (the bounded queue between the two stages).
_AHEAD = 2


@dataclass
class Extracted:
    """Features of the records that decoded, in the order asked for; the bad ones in `report`."""

    records: list[ImageRecord]
    features: np.ndarray
    digests: list[str]
    report: SkipReport = field(default_factory=SkipReport)
    n_cached: int = 0
    n_computed: int = 0
    cache_key: str = ""
    #: The int8 ONNX model that computed the features (None: fp32, ONNX or PyTorch alike).
    int8_model: Path | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def extract_features(
    source: ImageSource,
    backbone: Backbone,
    records: Sequence[ImageRecord] | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    runtime: str = "onnx",
    int8: bool = False,
    calibration_size: int = 256,
    workers: int | None = None,
    worker_inference: bool = True,
    encoder=None,
    _known_failures: dict[str, str] | None = None,
) -> Extracted:
    """Features of `records` (default: all of `source`), computing only those not cached.

    A file that cannot be read or decoded is skipped with a BadImageWarning naming it and
    listed in the result's `report`; it never stops the run.

    Parameters
    ----------
    max_pixels : int
        Largest width * height decoded (default `DEFAULT_MAX_PIXELS`, 64 Mpx, checked from the
        header); a larger image is skipped with a reason naming this parameter.
    runtime : {"onnx", "torch"}
        The inference runtime. "onnx" (default) falls back to PyTorch with one warning when
        onnxruntime cannot load. fp32 ONNX and PyTorch features share the cache (they agree
        within 1e-4, checked at export).
    int8 : bool
        Quantize the ONNX model to int8, calibrated on `calibration_size` images of `records`;
        int8 features are cached under their own key.
    workers : int, optional
        Worker processes (default: one per core, at most 8; 0 decodes and encodes in this process).
    worker_inference : bool
        With ONNX Runtime, encode in the worker processes (default), each on
        ``cores // workers`` threads; False decodes there and encodes here, on every core
        (the layout of PyTorch, whose module is not forked into workers).
    encoder : optional
        A ready encoder from `hashsearch.backbones.runtime` (overrides runtime and int8).
    """
    from hashsearch.backbones.runtime import OnnxEncoder
    from hashsearch.pipeline.encode import prepare_encoder
    from hashsearch.pipeline.workers import BatchEncoder, WorkerPool, bounded, crops, default_workers, worker_threads

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    records = list(source.records() if records is None else records)
    encoder = prepare_encoder(backbone, records, source, runtime=runtime, int8=int8, calibration_size=calibration_size,
                              cache_dir=cache_dir, max_pixels=max_pixels, encoder=encoder)
    cache = FeatureCache(cache_dir or default_cache_dir(), encoder.cache_key, encoder.feature_dim)
    # The features are filled in place as chunks finish (no list of parts to concatenate at the
    # end, which would hold every feature twice), and cut to the records that decoded.
    out = Extracted(records=[], features=np.empty((len(records), encoder.feature_dim), np.float32), digests=[],
                    cache_key=encoder.cache_key, int8_model=encoder.model_path if encoder.int8 else None)
    known = dict(_known_failures or {})
    bar = tqdm(total=len(records), unit="img", desc=f"features {encoder.cache_key}", disable=not progress or None)
    workers = default_workers() if workers is None else workers
    if worker_inference and isinstance(encoder, OnnxEncoder) and workers:
        task = BatchEncoder(encoder.preprocess, max_pixels, encoder.feature_dim, threads=worker_threads(workers))
    else:
        task = crops(encoder.preprocess, max_pixels)
    pool = WorkerPool(task, workers)
    try:
        stream = source.iter_bytes(records)

        def chunks():
            while True:
                chunk, size = [], 0
                for item in stream:  # (record, bytes or None, error)
                    chunk.append(item)
                    size += len(item[1] or b"")
                    if len(chunk) >= _CHUNK or size >= _CHUNK_BYTES:
                        break
                if not chunk:
                    return
                yield chunk

        def start(chunk):
            return _start_chunk(chunk, encoder, cache, pool, batch_size, max_pixels, known, out)

        def finish(state):
            recs, feats, digests = _finish_chunk(state, encoder, cache, out)
            out.records += recs
            out.digests += digests
            n = len(out.digests)
            out.features[n - len(feats) : n] = feats
            bar.update(len(state["chunk"]))
            bar.set_postfix(cached=out.n_cached, computed=out.n_computed, skipped=len(out.report))

        bounded(chunks(), start, finish, _AHEAD)
    finally:
        pool.close()
        bar.close()
        cache.close()
    out.features = out.features[: len(out.digests)]
    out.seconds = time.perf_counter() - t0
    return out


def _start_chunk(chunk, encoder, cache, pool, batch_size, max_pixels, known, out: Extracted) -> dict:
    """Read errors, digests, cache look-up; submit the missing images to the workers."""
    from hashsearch.pipeline.workers import pixel_model

    events: list[tuple[ImageRecord, str]] = []
    good: list[tuple[ImageRecord, bytes, str]] = []
    for record, data, error in chunk:
        if error is None and not data:
            error = "empty file"
        if error is not None:
            events.append((record, error))
            continue
        good.append((record, data, content_digest(data)))
    cached = cache.get_many(sorted({d for _, _, d in good}))
    out.n_cached += sum(d in cached for _, _, d in good)
    # Decode and encode each missing digest once, even if several files share it.
    todo: dict[str, tuple[ImageRecord, bytes]] = {}
    for record, data, digest in good:
        if digest not in cached and digest not in todo:
            todo[digest] = (record, data)
    jobs = [(d, r.key, b) for d, (r, b) in todo.items() if d not in known]
    if jobs and pool.encodes and not pool.task.ready:
        pool.task.model = pixel_model(encoder, jobs, max_pixels)
    futures = [pool.submit(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]
    return {"chunk": chunk, "events": events, "good": [(r, d) for r, _, d in good], "cached": cached,
            "todo": {d: r for d, (r, _) in todo.items()}, "futures": futures, "known": known,
            "encoded": pool.encodes}


def _finish_chunk(state: dict, encoder, cache, out: Extracted):
    """Wait for the chunk's batches (encoding them here if the workers only decode), cache the
    features, and report in file order."""
    cached, todo, good = state["cached"], state["todo"], state["good"]
    failed: dict[str, str] = {d: state["known"][d] for d in todo if d in state["known"]}
    for future in state["futures"]:
        digests, result, bad = future.result()
        failed.update(bad)
        if len(digests):
            feats = result if state["encoded"] else encoder.encode(result)
            cache.put_many(digests, feats)
            out.n_computed += len(digests)
            cached.update(zip(digests, feats))
    # The same order as the serial path: read errors, then decode failures, then duplicates.
    for record, reason in state["events"]:
        _skip(out.report, record, reason)
    for digest, record in todo.items():
        if digest in failed:
            _skip(out.report, record, failed[digest])
    kept = [(r, d) for r, d in good if d not in failed]
    # A duplicate of a file that failed was reported through its first copy; name it too.
    for r, d in good:
        if d in failed and todo[d] is not r:
            _skip(out.report, r, "same bytes as a file that failed to decode")
    dim = encoder.feature_dim
    feats = np.stack([cached[d] for _, d in kept]) if kept else np.zeros((0, dim), np.float32)
    return [r for r, _ in kept], feats.astype(np.float32, copy=False), [d for _, d in kept]


def _skip(report: SkipReport, record: ImageRecord, reason: str) -> None:
    warnings.warn(f"skipping {printable(record.key)}: {reason}", BadImageWarning, stacklevel=3)
    report.add(record.key, reason)


def extract_pixels(
    source: ImageSource,
    records: Sequence[ImageRecord],
    preprocess,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> tuple[list[ImageRecord], np.ndarray, SkipReport]:
    """The (n, s, s, 3) uint8 crops of `records` for training a backbone; bad files skipped and reported.

    Returns (records kept, pixels, report), in the order of `records`.
    """
    from hashsearch.pipeline.workers import decode_batch

    kept: list[ImageRecord] = []
    pixels: list[np.ndarray] = []
    report = SkipReport()
    bar = tqdm(total=len(records), unit="img", desc="decoding", disable=not progress or None)
    for record, data, error in source.iter_bytes(list(records)):
        bar.update(1)
        if error is None and not data:
            error = "empty file"
        if error is None:
            _, batch, failed = decode_batch([("", record.key, data)], preprocess, max_pixels, normalize=False)
            if failed:
                error = failed[0][1]
        if error is not None:
            _skip(report, record, error)
            continue
        kept.append(record)
        pixels.append(batch[0])
    bar.close()
    s = preprocess.input_size
    return kept, (np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8)), report
