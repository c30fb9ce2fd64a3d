"""Parallel exact Hamming scans: word views of packed codes, work split over threads, keys to results.

The compiled kernels (`hashsearch.index._kernels`) release the GIL, so plain Python threads
run them on every core. Work is split by query blocks when there are enough queries, and by
database shards otherwise (a single query then still uses every core); shard results are
merged by their (distance, id) keys, which are globally comparable.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult

_INT64_MAX = np.iinfo(np.int64).max
# Query blocks per thread, for load balance.
_BLOCKS_PER_THREAD = 4
# Below this many database rows a scan is not worth splitting over threads.
_MIN_SHARD_ROWS = 1 << 15

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def default_threads() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _run(tasks, n_threads: int) -> list:
    """Run zero-argument callables on up to `n_threads` threads; results in task order."""
    global _pool, _pool_size
    if n_threads <= 1 or len(tasks) <= 1:
        return [t() for t in tasks]
    with _pool_lock:
        if _pool is None or _pool_size < n_threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="hashsearch-scan")
            _pool_size = n_threads
        pool = _pool
    return list(pool.map(lambda t: t(), tasks))


def query_words(queries: Codes, db_words: np.ndarray) -> np.ndarray:
    """Queries as words of the same type and width as `db_words` (always a fresh array)."""
    W = db_words.shape[1] if db_words.ndim == 2 else 1
    if db_words.dtype == np.uint32:
        return np.ascontiguousarray(queries.data).view(np.uint32).copy()
    padded = np.zeros((len(queries), W * 8), np.uint8)
    padded[:, : queries.data.shape[1]] = queries.data
    return padded.view(np.uint64)


def _increasing(ids: np.ndarray) -> bool:
    """Whether ids are strictly increasing, checked in blocks (no (n,) temporary)."""
    step = 1 << 22
    for a in range(0, len(ids) - 1, step):
        block = ids[a : a + step + 1]
        if not bool(np.all(block[1:] > block[:-1])):
            return False
    return True


def id_order(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(rank, sorted_ids, ascending): each row's position in ascending id order, the ids in
    that order, and whether the rows already are in that order. When they are, `rank` is empty
    (the kernels read it as 0, 1, 2, ...) and `sorted_ids` is `ids` itself, not a copy: a
    memory-mapped index of 10^8 entries then needs no 1.6 GB of rank and id arrays."""
    ids = np.asarray(ids)
    if len(ids) < 2 or _increasing(ids):
        return np.zeros(0, np.int64), np.asarray(ids, np.int64), True
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank, np.asarray(ids, np.int64)[order], False


def knn_keys(
    qw: np.ndarray,
    dbw: np.ndarray,
    rank: np.ndarray,
    ascending: bool,
    lo: int,
    hi: int,
    n_keys: int,
    k: int,
    max_d: int,
    n_threads: int,
) -> np.ndarray:
    """Top-k keys (nq, k) of every query over database rows [lo, hi), on `n_threads` threads.

    `ascending`: `rank` is 0, 1, 2, ... (rows in id order, as `id_order` reports), which the scan exploits.
    """
    from hashsearch.index import _kernels

    nq = len(qw)
    out = np.full((nq, k), _INT64_MAX, np.int64)
    rows = hi - lo
    if nq == 0 or rows <= 0:
        return out
    flat = dbw.reshape(-1)
    asc = int(bool(ascending))
    if nq >= n_threads * _BLOCKS_PER_THREAD or rows < 2 * _MIN_SHARD_ROWS or n_threads == 1:
        block = max(1, -(-nq // (n_threads * _BLOCKS_PER_THREAD)))
        tasks = [
            (
                lambda a=a: _kernels.knn_scan(
                    qw[a : a + block], flat, rank, lo, hi, n_keys, k, max_d, asc, out[a : a + block]
                )
            )
            for a in range(0, nq, block)
        ]
        _run(tasks, n_threads)
        return out
    # Few queries: split the database, then merge the shards' keys.
    n_shards = min(n_threads, rows // _MIN_SHARD_ROWS)
    bounds = np.linspace(lo, hi, n_shards + 1).astype(np.int64)
    parts = np.full((n_shards, nq, k), _INT64_MAX, np.int64)
    tasks = [
        (
            lambda s=s: _kernels.knn_scan(
                qw, flat, rank, int(bounds[s]), int(bounds[s + 1]), n_keys, k, max_d, asc, parts[s]
            )
        )
        for s in range(n_shards)
    ]
    _run(tasks, n_threads)
    return merge_keys(list(parts), k)


def merge_keys(parts: list[np.ndarray], k: int) -> np.ndarray:
    """The k smallest keys per query of several (nq, k_i) key arrays."""
    allk = np.concatenate(parts, axis=1)
    if allk.shape[1] > k:
        allk = np.partition(allk, k - 1, axis=1)[:, :k]
    return np.sort(allk, axis=1)


def range_keys(
    qw: np.ndarray, dbw: np.ndarray, rank: np.ndarray, lo: int, hi: int, n_keys: int, radius: int, n_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """(counts, keys) of every row in [lo, hi) within `radius`, grouped by query and sorted."""
    from hashsearch.index import _kernels

    nq = len(qw)
    if nq == 0 or hi <= lo:
        return np.zeros(nq, np.int64), np.zeros(0, np.int64)
    flat = dbw.reshape(-1)
    block = max(1, -(-nq // (n_threads * _BLOCKS_PER_THREAD)))
    tasks = [
        (lambda a=a: _kernels.range_scan(qw[a : a + block], flat, rank, lo, hi, n_keys, radius))
        for a in range(0, nq, block)
    ]
    parts = _run(tasks, n_threads)
    return np.concatenate([c for c, _ in parts]), np.concatenate([k for _, k in parts])


def keys_to_search(keys: np.ndarray, n_keys: int, sorted_ids: np.ndarray) -> SearchResult:
    """Sorted keys (nq, k) to a SearchResult (missing slots: id -1, distance -1)."""
    found = keys != _INT64_MAX
    safe = np.where(found, keys, 0)
    distances = np.where(found, safe // max(n_keys, 1), -1).astype(np.int32)
    ids = np.where(found, sorted_ids[safe % max(n_keys, 1)] if len(sorted_ids) else 0, MISSING_ID).astype(np.int64)
    return SearchResult(distances, ids)


def keys_to_range(counts: np.ndarray, keys: np.ndarray, n_keys: int, sorted_ids: np.ndarray) -> RangeResult:
    """Per-query counts and grouped sorted keys to a RangeResult."""
    lims = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=lims[1:])
    n_keys = max(n_keys, 1)
    return RangeResult(lims, (keys // n_keys).astype(np.int32), sorted_ids[keys % n_keys].astype(np.int64))
