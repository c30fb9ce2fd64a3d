"""The local engine: image files -> features on this machine, batched, cached by content, skipping bad files.

It schedules the steps of `hashsearch.pipeline.steps`: this process reads the files, digests
them, looks them up in the feature cache (a chunk at a time), writes the new features to the cache
and assembles the result; worker processes (`hashsearch.pipeline.workers`) decode the missing
images and, with ONNX Runtime (the default runtime; int8 with `int8=True`), extract their
features too, each on one thread. A bounded queue of chunks keeps memory flat whatever the
collection size. Every batch is committed to the feature cache as it is made, so an interrupted
run resumes without recomputing anything finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hashsearch.backbones.base import Backbone, Preprocess
from hashsearch.backbones.runtime import FeatureExtractor
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import ImageRecord, ImageSource, SkipReport
from hashsearch.pipeline.steps import (
    BatchExtractor,
    Chunk,
    Extracted,
    Run,
    decode_batch,
    read,
    report_bad,
    worker_model,
)
from hashsearch.pipeline.workers import WorkerPool, bounded, crops, default_workers, worker_threads

# Chunks decoded ahead of inference (the bounded queue between the two stages).
_AHEAD = 2


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
    extractor: FeatureExtractor | None = None,
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
        Worker processes (default: one per core, at most 8; 0 decodes and extracts in this process).
    worker_inference : bool
        With a `portable` runtime (ONNX Runtime), extract in the worker processes (default),
        each on ``cores // workers`` threads; False decodes there and extracts here, on every
        core (the layout of PyTorch, whose module is not forked into workers).
    extractor : FeatureExtractor, optional
        A ready extractor (`hashsearch.backbones.make_extractor`); overrides runtime and int8.

    Raises
    ------
    ValueError
        batch_size < 1; workers not an integer >= 0; int8 without ONNX Runtime.
    """
    run = Run(
        source,
        backbone,
        records,
        cache_dir=cache_dir,
        batch_size=batch_size,
        max_pixels=max_pixels,
        runtime=runtime,
        int8=int8,
        calibration_size=calibration_size,
        extractor=extractor,
    )
    ex, out = run.extractor, run.out
    workers = default_workers() if workers is None else workers
    if worker_inference and ex.portable and workers:
        task = BatchExtractor(ex.preprocess, max_pixels, ex.feature_dim, threads=worker_threads(workers))
    else:
        task = crops(ex.preprocess, max_pixels)
    pool = WorkerPool(task, workers)
    bar = tqdm(total=len(run.records), unit="img", desc=f"features {ex.cache_key}", disable=not progress or None)
    with run, pool:
        try:

            def finish(state: tuple[Chunk, list]) -> None:
                chunk, futures = state
                _finish_chunk(run, chunk, futures, pool.extracts)
                bar.update(chunk.size)
                bar.set_postfix(cached=out.n_cached, computed=out.n_computed, skipped=len(out.report))

            bounded(run.chunks(), lambda items: _start_chunk(run, items, pool), finish, _AHEAD)
        finally:
            bar.close()
    return run.result()


def _start_chunk(run: Run, items: list, pool: WorkerPool) -> tuple[Chunk, list]:
    """Steps 2-3 here; steps 4-5 of the missing images submitted to the workers."""
    chunk = run.look_up(items)
    jobs, chunk.jobs = chunk.jobs, []
    if jobs and pool.extracts and not pool.task.ready:
        pool.task.model = worker_model(run.extractor, jobs, run.max_pixels)
    return chunk, [pool.submit(batch) for batch in run.batches(jobs)]


def _finish_chunk(run: Run, chunk: Chunk, futures: list, extracted: bool) -> None:
    """Wait for the chunk's batches (step 5 here if the workers only decode), steps 6 and 7."""
    failed: dict[str, str] = {}
    for future in futures:
        digests, result, bad = future.result()
        failed.update(bad)
        if len(digests):
            feats = result if extracted else run.extractor.extract(result)
            run.store(digests, feats)
            chunk.cached.update(zip(digests, feats))
    run.assemble(chunk, failed)


def extract_pixels(
    source: ImageSource,
    records: Sequence[ImageRecord],
    preprocess: Preprocess,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> tuple[list[ImageRecord], np.ndarray, SkipReport]:
    """The (n, s, s, 3) uint8 crops of `records` for training a backbone (steps 1 and 4); bad
    files skipped and reported.

    Returns (records kept, pixels, report), in the order of `records`.
    """
    kept: list[ImageRecord] = []
    pixels: list[np.ndarray] = []
    report = SkipReport()
    bar = tqdm(total=len(records), unit="img", desc="decoding", disable=not progress or None)
    for record, data, error in read(source, list(records)):
        bar.update(1)
        if error is None:
            _, batch, failed = decode_batch([("", record.key, data)], preprocess, max_pixels, normalize=False)
            if failed:
                error = failed[0][1]
        if error is not None:
            report_bad(report, record, error)
            continue
        kept.append(record)
        pixels.append(batch[0])
    bar.close()
    s = preprocess.input_size
    return kept, (np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8)), report
