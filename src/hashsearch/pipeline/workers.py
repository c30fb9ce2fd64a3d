"""Worker processes for the local engine: steps 4 and 5 (decode, and for a portable runtime
also infer) beside the main process.

`WorkerPool` runs a task in a process pool, or inline with `workers=0`: a `BatchExtractor`
(decode and extract: one single-thread ONNX Runtime session per process, so each core decodes and
infers in turn and the pixels never leave the process) or `crops` (decode only, for a runtime
whose model is not sent to other processes). `bounded` is the bounded queue between the main
process and the pool.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from hashsearch.backbones.base import Preprocess
from hashsearch.pipeline.steps import BatchExtractor, Job, decode_batch


def default_workers() -> int:
    """Worker processes by default: one per core, at most 8.

    With ONNX each worker decodes a batch and then extracts it on one thread (`BatchExtractor`), so
    the cores are shared without oversubscription. With PyTorch the workers only decode and the
    main process infers; the OS then shares the cores between them, a worker waiting on the
    bounded queue leaving its core to inference.
    """
    return max(1, min(8, os.cpu_count() or 1))


def worker_threads(workers: int) -> int:
    """Inference threads per worker process when `workers` share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


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

    `task` is a `BatchExtractor`, or `crops(preprocess, max_pixels)` to decode only. It is handed to
    each process once, when the pool starts on the first `submit` (a `BatchExtractor` that is not
    `ready` yet runs inline until it is). The caller bounds memory by keeping at most a fixed
    number of submitted batches in flight (see `bounded`).
    """

    def __init__(self, task: Callable, workers: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0 runs in this process), got {workers!r}")
        self.task, self.workers = task, workers
        self._pool = None
        #: How the worker processes start ("fork", "forkserver", "spawn"), once the pool has started.
        self.start_method: str | None = None

    @property
    def extracts(self) -> bool:
        """Whether `submit` returns features (a `BatchExtractor`) rather than uint8 crops."""
        return isinstance(self.task, BatchExtractor)

    def submit(self, jobs: Sequence[Job]) -> Future:
        """Run the task on `jobs`: a future of (digests, features or crops, [(digest, reason)] failed)."""
        if self.workers == 0 or not getattr(self.task, "ready", True):
            return _Done(self.task(jobs))
        if self._pool is None:
            import multiprocessing
            import sys

            # forkserver/spawn would re-import torch in each worker; fork is cheap, and safe here
            # because workers only run Pillow, numpy and a session they make themselves -- unless
            # this process holds gRPC's threads (a Milvus client): a forked child of those can die
            # (BrokenProcessPool), so workers then start from a clean forkserver.
            methods = multiprocessing.get_all_start_methods()
            grpc_threads = "grpc" in sys.modules
            method = "fork" if "fork" in methods and not grpc_threads else None
            if method is None and "forkserver" in methods:
                method = "forkserver"
            context = multiprocessing.get_context(method)
            self.start_method = context.get_start_method()
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_set_task,
                initargs=(self.task,),
            )
        return self._pool.submit(_run_task, list(jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> WorkerPool:
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
