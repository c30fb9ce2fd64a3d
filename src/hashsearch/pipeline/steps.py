"""Files -> features, as one list of steps that both engines schedule.

For each image file, in this order:

1. read        `read`: its bytes; a file that cannot be read, or is empty, is a bad file here
2. digest      `content_digest`: names the bytes; the feature cache's key
3. look up     `Run.look_up`: the digests already in the feature cache; each missing digest once
4. decode      `decode_batch`: bytes -> uint8 crops (`Preprocess.crop`); an image that does not
               decode is a bad file here
5. infer       `FeatureExtractor.extract`: crops -> features (`BatchExtractor` runs 4 and 5
               together, in the process that calls it)
6. cache write `Run.store`: each batch's features committed as it is made, so that an
               interrupted run resumes without recomputing anything finished
7. assemble    `Run.assemble`: the features in the records' order; the bad files reported in
               file order (read errors, decode failures, copies of a file that failed)

A `Run` holds one extraction's extractor, feature cache and result. The engines only schedule
these steps: the local engine (`hashsearch.pipeline.local`) runs 1-3, 6 and 7 here, chunk by
chunk, and 4-5 in worker processes; the Ray engine (`hashsearch.pipeline.ray_engine`) runs 1-3
for every chunk, then 1, 2, 4 and 5 on an actor pool for the missing files, then 6 and 7 here.
Both give the same features, counts and report.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashsearch.backbones.base import Backbone, Preprocess
from hashsearch.backbones.runtime import (
    PIXELS,
    FeatureExtractor,
    OnnxExtractor,
    TorchExtractor,
    calibration_digest,
    make_extractor,
    onnx_session,
)
from hashsearch.data.decode import DEFAULT_MAX_PIXELS, DecodeError, check_pixels, decode_image
from hashsearch.data.sources import BadImageWarning, ImageRecord, ImageSource, SkipReport, printable
from hashsearch.paths import cache_dir as default_cache_dir
from hashsearch.pipeline.cache import FeatureCache, content_digest

#: (digest, name, bytes): one image to decode.
Job = tuple[str, str, bytes]
#: (record, bytes, None) for a file read, (record, None or bytes, reason) for one that was not.
Read = tuple[ImageRecord, "bytes | None", "str | None"]

#: Files per chunk (steps 1-3 and 7 run a chunk at a time), or fewer: a chunk also ends once its
#: files hold `CHUNK_BYTES`, so that large photos do not fill memory.
CHUNK = 512
CHUNK_BYTES = 64 * 2**20

#: Images per ONNX Runtime call in a worker (`BatchExtractor`). A call's activations, and so a
#: worker's memory, are an eighth of a 64-image call's, and they stay nearer the CPU's caches
#: (a one-thread session runs faster on 8 images per call than on 64: see docs/encoding.md).
INFER_BATCH = 8


# -- 1. read ---------------------------------------------------------------------------------
def read(source: ImageSource, records: Sequence[ImageRecord]) -> Iterator[Read]:
    """Step 1: each record's bytes, in order, as (record, bytes, None), or (record, bytes or
    None, reason) for a file that cannot be read or is empty."""
    for record, data, error in source.iter_bytes(records):
        if error is None and not data:
            error = "empty file"
        yield record, data, error


def chunks(items: Iterable[Read]) -> Iterator[list[Read]]:
    """`items` (from `read`) in lists of at most `CHUNK` files or about `CHUNK_BYTES` bytes."""
    stream = iter(items)
    while True:
        chunk, size = [], 0
        for item in stream:
            chunk.append(item)
            size += len(item[1] or b"")
            if len(chunk) >= CHUNK or size >= CHUNK_BYTES:
                break
        if not chunk:
            return
        yield chunk


# -- 4. decode, 5. infer ---------------------------------------------------------------------
def decode_batch(
    jobs: Sequence[Job], preprocess: Preprocess, max_pixels: int, draft: bool = True, normalize: bool = True
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Step 4: decode and preprocess `jobs`; return (digests decoded, their pixels, [(digest, reason)] failed).

    Every engine decodes this way (`decode_image`, with Pillow's draft mode for JPEGs larger than
    twice the target size), so the features and the bad-file reasons are the same whichever runs
    it. With `normalize=False` the pixels are the (n, s, s, 3) uint8 crops that
    `FeatureExtractor.extract` takes (4x less data between processes than float32); with
    `normalize=True`, the preprocessed (n, 3, s, s) float32 batch of `FeatureExtractor.forward`.
    """
    ok: list[str] = []
    pixels: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    size = (preprocess.input_size, preprocess.input_size) if draft else None
    for digest, name, data in jobs:
        try:
            image = decode_image(data, name, max_pixels, draft=size)
        except DecodeError as e:
            failed.append((digest, e.reason))
            continue
        ok.append(digest)
        pixels.append(preprocess.crop(image))
    s = preprocess.input_size
    batch = np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8)
    return ok, (preprocess.normalize(batch) if normalize else batch), failed


class BatchExtractor:
    """Steps 4 and 5 in the process that calls it: jobs -> (digests, features, [(digest, reason)] failed).

    Holds the ONNX model's bytes (uint8 crops in: `FeatureExtractor.worker_model`) or, for a
    runtime that is not `portable` (PyTorch), the backbone; the inference session (`threads`
    threads) is made on first use in the process that runs it, and is never pickled. The local
    engine's worker processes and the Ray engine's actors run it.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        max_pixels: int,
        feature_dim: int,
        *,
        model: bytes | None = None,
        backbone: Backbone | None = None,
        threads: int = 1,
        infer_batch: int = INFER_BATCH,
    ) -> None:
        self.preprocess, self.max_pixels, self.feature_dim = preprocess, max_pixels, feature_dim
        self.model, self.backbone, self.threads, self.infer_batch = model, backbone, threads, infer_batch
        self._session = None

    @property
    def ready(self) -> bool:
        """Whether it can extract (an ONNX model waits for its export, see `worker_model`)."""
        return self.model is not None or self.backbone is not None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}

    def extract(self, pixels: np.ndarray) -> np.ndarray:
        """Step 5: features (n, feature_dim) float32 of (n, s, s, 3) uint8 crops."""
        if len(pixels) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        if self.model is not None:
            if self._session is None:
                self._session = onnx_session(self.model, self.threads)
            step = self.infer_batch
            return np.concatenate(
                [self._session.run(None, {PIXELS: pixels[i : i + step]})[0] for i in range(0, len(pixels), step)]
            ).astype(np.float32, copy=False)
        if self.backbone is None:
            raise RuntimeError("BatchExtractor has no model yet: export it first (see worker_model)")
        if self._session is None:
            import torch

            torch.set_num_threads(self.threads)
            self._session = TorchExtractor(self.backbone)
        return self._session.extract(pixels)

    def __call__(self, jobs: Sequence[Job]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        digests, pixels, failed = decode_batch(jobs, self.preprocess, self.max_pixels, normalize=False)
        return digests, self.extract(pixels), failed


def worker_model(extractor: FeatureExtractor, jobs: Iterable[Job], max_pixels: int) -> bytes | None:
    """`extractor.worker_model()`, exported first if it is not `ready` (checked against PyTorch on
    the first images of `jobs` that decode, taken a few at a time: `jobs` may be a lazy stream of
    files). None when it is not ready and none of `jobs` decodes (then nothing is left to extract)."""
    if extractor.ready:
        return extractor.worker_model()
    stream = iter(jobs)
    while some := list(itertools.islice(stream, 8)):
        _, pixels, _ = decode_batch(some, extractor.preprocess, max_pixels, normalize=False)
        if len(pixels):
            return extractor.worker_model(pixels)
    return None


# -- the extractor, int8 ----------------------------------------------------------------------
def calibration_records(records: Sequence[ImageRecord], n: int) -> list[ImageRecord]:
    """`n` records spread evenly over `records` (all of them if fewer), in a fixed order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"calibration_size must be a positive integer (a few hundred is typical), got {n!r}")
    if len(records) <= n:
        return list(records)
    picks = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in sorted(set(picks.tolist()))]


def calibrate(
    extractor: FeatureExtractor,
    source: ImageSource,
    records: Sequence[ImageRecord],
    n: int = 256,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> str:
    """Quantize `extractor` (an `OnnxExtractor`) to int8, calibrated on `n` images of `records`.

    Bad files among them are left out (the extraction run itself reports them). Returns the
    extractor's new cache key.

    Raises
    ------
    ValueError
        `extractor` is not an ONNX extractor; no picked image decodes.
    """
    if not isinstance(extractor, OnnxExtractor):
        raise ValueError(
            f"int8 quantization needs the ONNX runtime, but extraction runs on {extractor.runtime!r} "
            "(runtime='torch' was asked for, or onnxruntime cannot load): use runtime='onnx' or drop int8"
        )
    picked = calibration_records(list(records), n)
    jobs = [(content_digest(data), r.key, data) for r, data, err in read(source, picked) if err is None]
    digests, pixels, _ = decode_batch(jobs, extractor.preprocess, max_pixels)
    if not digests:
        raise ValueError(f"int8 calibration found no readable image among {len(picked)} picked from the source")
    extractor.quantize(pixels, calibration_digest(digests))
    return extractor.cache_key


def prepare_extractor(
    backbone: Backbone,
    records: Sequence[ImageRecord],
    source: ImageSource,
    *,
    runtime: str = "onnx",
    int8: bool = False,
    calibration_size: int = 256,
    cache_dir=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    extractor: FeatureExtractor | None = None,
) -> FeatureExtractor:
    """The extractor a run uses: `extractor` if given, else `make_extractor(backbone, runtime)`;
    quantized to int8 (`calibrate`) when `int8` and it is not yet."""
    if extractor is None:
        extractor = make_extractor(backbone, runtime, cache_dir=cache_dir)
    if int8 and not extractor.int8:
        calibrate(extractor, source, records, calibration_size, max_pixels=max_pixels)
    return extractor


# -- 3. look up, 6. cache write, 7. assemble --------------------------------------------------
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


@dataclass
class Chunk:
    """Steps 1-3 done for a chunk of files: what to report, what is cached, what to compute."""

    #: Files in the chunk.
    size: int
    #: (record, reason) of each file that could not be read, in file order.
    unreadable: list[tuple[ImageRecord, str]]
    #: (record, digest) of each file read, in file order.
    good: list[tuple[ImageRecord, str]]
    #: digest -> features, of the digests found in the cache (and, once computed, the others).
    cached: dict[str, np.ndarray]
    #: Each digest missing from the cache -> its first file in the chunk.
    todo: dict[str, ImageRecord]
    #: (digest, key, bytes) of each digest in `todo`, for steps 4 and 5 (emptied once sent).
    jobs: list[Job]


class Run:
    """One extraction: the extractor, its feature cache and the result, with steps 1-3, 6 and 7.

    Parameters as `hashsearch.pipeline.local.extract_features`. A context manager (closes the
    cache); `result()` gives the `Extracted`.
    """

    def __init__(
        self,
        source: ImageSource,
        backbone: Backbone,
        records: Sequence[ImageRecord] | None,
        *,
        cache_dir: str | Path | None,
        batch_size: int,
        max_pixels: int,
        runtime: str,
        int8: bool,
        calibration_size: int,
        extractor: FeatureExtractor | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.t0 = time.perf_counter()
        self.source, self.batch_size, self.max_pixels = source, batch_size, max_pixels
        self.records = list(source.records() if records is None else records)
        self.extractor = prepare_extractor(
            backbone,
            self.records,
            source,
            runtime=runtime,
            int8=int8,
            calibration_size=calibration_size,
            cache_dir=cache_dir,
            max_pixels=max_pixels,
            extractor=extractor,
        )
        ex = self.extractor
        self.cache = FeatureCache(cache_dir or default_cache_dir(), ex.cache_key, ex.feature_dim)
        # The features are filled in place as chunks are assembled (no list of parts to
        # concatenate at the end, which would hold every feature twice), and cut at the end.
        self.out = Extracted(
            records=[],
            features=np.empty((len(self.records), ex.feature_dim), np.float32),
            digests=[],
            cache_key=ex.cache_key,
            int8_model=ex.int8_model,
        )

    def chunks(self) -> Iterator[list[Read]]:
        """Step 1 over the run's records, in chunks."""
        return chunks(read(self.source, self.records))

    def look_up(self, items: list[Read]) -> Chunk:
        """Steps 2 and 3 on a chunk of read files; counts the files found in the cache."""
        unreadable: list[tuple[ImageRecord, str]] = []
        good: list[tuple[ImageRecord, str]] = []
        data_of: dict[str, bytes] = {}
        for record, data, error in items:
            if error is not None:
                unreadable.append((record, error))
                continue
            digest = content_digest(data)
            good.append((record, digest))
            data_of.setdefault(digest, data)
        cached = self.cache.get_many(sorted(data_of))
        # A cached file meets the pixel limit as a decoded one would (checked from its header).
        refused: dict[str, str] = {}
        for digest in list(cached):
            try:
                check_pixels(data_of[digest], digest, self.max_pixels)
            except DecodeError as e:
                refused[digest] = e.reason
                del cached[digest]
        if refused:
            unreadable += [(r, refused[d]) for r, d in good if d in refused]
            good = [(r, d) for r, d in good if d not in refused]
        self.out.n_cached += sum(d in cached for _, d in good)
        # Each missing digest once, even if several files share it.
        todo: dict[str, ImageRecord] = {}
        for record, digest in good:
            if digest not in cached and digest not in todo:
                todo[digest] = record
        jobs = [(d, r.key, data_of[d]) for d, r in todo.items()]
        return Chunk(len(items), unreadable, good, cached, todo, jobs)

    def batches(self, jobs: list[Job]) -> list[list[Job]]:
        """`jobs` in batches of `batch_size` (what a worker or an actor takes at a time)."""
        return [jobs[i : i + self.batch_size] for i in range(0, len(jobs), self.batch_size)]

    def store(self, digests: list[str], features: np.ndarray) -> None:
        """Step 6: write a batch's features to the cache (committed), and count them."""
        if len(digests):
            self.cache.put_many(digests, features)
            self.out.n_computed += len(digests)

    def assemble(self, chunk: Chunk, failed: dict[str, str]) -> None:
        """Step 7: append the chunk's files that have features (`chunk.cached`) to the result, and
        report its bad files (`failed`: digest -> why it did not decode), in the same order
        whichever engine ran: read errors, then decode failures, then copies of a failed file."""
        out = self.out
        for record, reason in chunk.unreadable:
            report_bad(out.report, record, reason)
        for digest, record in chunk.todo.items():
            if digest in failed:
                report_bad(out.report, record, failed[digest])
        kept = [(r, d) for r, d in chunk.good if d not in failed]
        # A copy of a file that failed was reported through its first copy; name it too.
        for r, d in chunk.good:
            if d in failed and chunk.todo[d] is not r:
                report_bad(out.report, r, "same bytes as a file that failed to decode")
        n = len(out.digests)
        out.records += [r for r, _ in kept]
        out.digests += [d for _, d in kept]
        if kept:
            out.features[n : n + len(kept)] = np.stack([chunk.cached[d] for _, d in kept])

    def result(self) -> Extracted:
        """The `Extracted` of the run, once every chunk is assembled."""
        self.out.features = self.out.features[: len(self.out.digests)]
        self.out.seconds = time.perf_counter() - self.t0
        return self.out

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def report_bad(report: SkipReport, record: ImageRecord, reason: str) -> None:
    """A bad file: a BadImageWarning naming it, and a row of `report`."""
    warnings.warn(f"skipping {printable(record.key)}: {reason}", BadImageWarning, stacklevel=3)
    report.add(record.key, reason)
