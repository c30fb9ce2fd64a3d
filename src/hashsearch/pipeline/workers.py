"""Worker processes for encoding: decode (and, for ONNX, encode) batches beside the main process.

`decode_batch` turns image bytes into a batch of cropped uint8 pixels (or, with `normalize=True`,
the preprocessed (n, 3, s, s) float32 batch the network takes). `BatchEncoder` decodes a batch
and encodes it with an inference session of its own: the local pipeline's worker processes run
it (one single-thread ONNX Runtime session per process, so each core decodes and infers in turn
and the pixels never leave the process), and so do the Ray engine's actors. `WorkerPool` runs
either in a process pool, or inline with `workers=0`. Every path decodes the same way
(`decode_image`, with Pillow's draft mode for JPEGs larger than twice the target size), so the
features, and the bad-file reasons, are the same whichever runs it.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np

from hashsearch.backbones.base import Preprocess
from hashsearch.data.decode import DecodeError, decode_image

#: (digest, name, bytes): one image to decode.
Job = tuple[str, str, bytes]


def decode_batch(
    jobs: Sequence[Job], preprocess: Preprocess, max_pixels: int, draft: bool = True, normalize: bool = True
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Decode and preprocess `jobs`; return (digests decoded, their pixels, [(digest, reason)] failed).

    With `normalize=False` the pixels are the (n, s, s, 3) uint8 crops, for `preprocess.normalize`
    in the process that runs inference (4x less data between processes than float32).
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


def default_workers() -> int:
    """Worker processes by default: one per core, at most 8.

    With ONNX each worker decodes a batch and then encodes it on one thread (`BatchEncoder`), so
    the cores are shared without oversubscription. With PyTorch the workers only decode and the
    main process infers; the OS then shares the cores between them, a worker waiting on the
    bounded queue leaving its core to inference.
    """
    return max(1, min(8, os.cpu_count() or 1))


def worker_threads(workers: int) -> int:
    """Inference threads per worker process when `workers` share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


#: Images per ONNX Runtime call in a worker (`BatchEncoder`). A call's activations, and so a
#: worker's memory, are an eighth of a 64-image call's, and they stay nearer the CPU's caches: a
#: one-thread session ran faster on 8 images per call than on 64, at 128 and 224 px, fp32 and
#: int8 (`benchmarks/encode.py` prints both).
INFER_BATCH = 8


class BatchEncoder:
    """Decode a batch of jobs and encode it in the process that calls it -> (digests, features, failed).

    Holds the ONNX model's bytes (uint8 crops in, see `pixel_input_model`) or, on the PyTorch
    fallback, the backbone; the inference session (`threads` threads) is made on first use in the
    process that runs it, and is never pickled. The local pipeline's worker processes and the Ray
    engine's actors run it.
    """

    def __init__(self, preprocess: Preprocess, max_pixels: int, feature_dim: int, *, model: bytes | None = None,
                 backbone=None, threads: int = 1, infer_batch: int = INFER_BATCH) -> None:
        self.preprocess, self.max_pixels, self.feature_dim = preprocess, max_pixels, feature_dim
        self.model, self.backbone, self.threads, self.infer_batch = model, backbone, threads, infer_batch
        self._session = None

    @property
    def ready(self) -> bool:
        """Whether it can encode (an ONNX model waits for its export, see `pixel_model`)."""
        return self.model is not None or self.backbone is not None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Features of (n, s, s, 3) uint8 crops."""
        if len(pixels) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        if self.model is not None:
            from hashsearch.backbones.runtime import PIXELS, _session

            if self._session is None:
                self._session = _session(self.model, self.threads)
            step = self.infer_batch
            return np.concatenate([self._session.run(None, {PIXELS: pixels[i : i + step]})[0]
                                   for i in range(0, len(pixels), step)]).astype(np.float32, copy=False)
        if self.backbone is None:
            raise RuntimeError("BatchEncoder has no model yet: export it first (see pixel_model)")
        if self._session is None:
            import torch

            from hashsearch.backbones.runtime import TorchEncoder

            torch.set_num_threads(self.threads)
            self._session = TorchEncoder(self.backbone)
        return self._session.encode(pixels)

    def __call__(self, jobs: Sequence[Job]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        digests, pixels, failed = decode_batch(jobs, self.preprocess, self.max_pixels, normalize=False)
        return digests, self.encode(pixels), failed


def pixel_model(encoder, jobs: Iterable[Job], max_pixels: int) -> bytes | None:
    """An ONNX encoder's model on uint8 crops, for sessions in other processes; exported first if
    it is not yet (checked against PyTorch on the first images of `jobs` that decode, taken a few
    at a time: `jobs` may be a lazy stream of files). None when it is not exported and none of
    `jobs` decodes (then nothing is left to encode)."""
    if encoder.exported:
        return encoder.pixel_model_bytes()
    stream = iter(jobs)
    while some := list(itertools.islice(stream, 8)):
        _, pixels, _ = decode_batch(some, encoder.preprocess, max_pixels, normalize=False)
        if len(pixels):
            return encoder.pixel_model_bytes(pixels)
    return None


class _Done(Future):
    """An already-finished future (for `workers=0`: run inline, in order)."""

    def __init__(self, value) -> None:
        super().__init__()
        self.set_result(value)


_TASK: Callable | None = None  # a worker process's task, set once when it starts


def _set_task(task: Callable) -> None:
    global _TASK
    _TASK = task


def _run_task(jobs: list[Job]):
    return _TASK(jobs)


class WorkerPool:
    """Runs `task(jobs)` in `workers` processes (inline with `workers=0`); a context manager.

    `task` is a `BatchEncoder`, or `crops(preprocess, max_pixels)` to decode only. It is handed to
    each process once, when the pool starts on the first `submit` (a `BatchEncoder` that is not
    `ready` yet runs inline until it is). The caller bounds memory by keeping at most a fixed
    number of submitted batches in flight (see `bounded`).
    """

    def __init__(self, task: Callable, workers: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0 runs in this process), got {workers!r}")
        self.task, self.workers = task, workers
        self._pool = None

    @property
    def encodes(self) -> bool:
        """Whether `submit` returns features (a `BatchEncoder`) rather than uint8 crops."""
        return isinstance(self.task, BatchEncoder)

    def submit(self, jobs: Sequence[Job]) -> Future:
        """Run the task on `jobs`: a future of (digests, features or crops, [(digest, reason)] failed)."""
        if self.workers == 0 or not getattr(self.task, "ready", True):
            return _Done(self.task(jobs))
        if self._pool is None:
            import multiprocessing

            # forkserver/spawn would re-import torch in each worker; fork is cheap, and safe here
            # because workers only run Pillow, numpy and a session they make themselves.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_set_task, initargs=(self.task,))
        return self._pool.submit(_run_task, list(jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def crops(preprocess: Preprocess, max_pixels: int) -> Callable:
    """The decode-only task: jobs -> (digests, (n, s, s, 3) uint8 crops, failed)."""
    return functools.partial(decode_batch, preprocess=preprocess, max_pixels=max_pixels, normalize=False)


def bounded(items: Iterable, start: Callable, finish: Callable, depth: int) -> None:
    """For each item call `start(item)` -> handle, and `finish(handle)` in order, with at most
    `depth` handles started and not finished (a bounded queue between two stages)."""
    pending: deque = deque()
    for item in items:
        pending.append(start(item))
        while len(pending) > depth:
            finish(pending.popleft())
    while pending:
        finish(pending.popleft())
