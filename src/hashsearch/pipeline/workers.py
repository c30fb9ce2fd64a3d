"""Decode-and-preprocess jobs, run in worker processes so that decoding overlaps inference.

One function, `decode_batch`, turns image bytes into a batch of cropped uint8 pixels (or, with
`normalize=True`, the preprocessed (n, 3, s, s) float32 batch the network takes): the local
pipeline runs it in a process pool, the Ray engine in Ray tasks, and `workers=0` inline. Every
path decodes the same way (`decode_image`, with Pillow's draft mode for JPEGs larger than twice
the target size), so the features, and the bad-file reasons, are the same whichever runs it.
"""

from __future__ import annotations

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
    """Decode processes by default: one per core, at most 8.

    Decoding and inference then share every core, the OS scheduling them: a worker waiting on
    the bounded queue leaves its core to inference, and a worker decoding fills the gaps between
    inference calls. On 2 cores it was ahead of one worker (cores - 1) on 1 Mpx JPEGs, where
    decoding is heavy, and level with it on CIFAR-10 within the machine's noise (one worker was
    ahead in two of three runs); `benchmarks/encode.py` prints both, for fp32 on each data set.
    """
    return max(1, min(8, os.cpu_count() or 1))


class _Done(Future):
    """An already-finished future (for `workers=0`: decode inline, in order)."""

    def __init__(self, value) -> None:
        super().__init__()
        self.set_result(value)


class DecodePool:
    """A process pool for `decode_batch` (or inline with `workers=0`); a context manager.

    The caller bounds memory by keeping at most a fixed number of submitted batches in flight
    (see `bounded`).
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0 decodes in-process), got {workers!r}")
        self.workers = workers
        self._pool = None
        if workers > 0:
            import multiprocessing

            # forkserver/spawn would re-import torch in each worker; fork is cheap and safe
            # here because workers only run Pillow and numpy.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            ctx = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx)

    def submit(self, jobs: Sequence[Job], preprocess: Preprocess, max_pixels: int) -> Future:
        """Decode `jobs` to uint8 crops (see `decode_batch`, normalize=False)."""
        if self._pool is None:
            return _Done(decode_batch(jobs, preprocess, max_pixels, normalize=False))
        return self._pool.submit(decode_batch, list(jobs), preprocess, max_pixels, True, False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
