"""Coarse-to-fine search: Hamming candidates re-ranked by backbone-feature distance.

The Hierarchical Deep Search of Lin et al., "Deep Learning of Binary Hash Codes for Fast
Image Retrieval" (DLBHC, CVPR Workshops 2015): a coarse level picks a candidate pool by
Hamming distance of the binary codes, and a fine level ranks the pool by Euclidean distance
between the real-valued features the codes were computed from.

The paper takes "the candidates whose Hamming distance is lower than a threshold"; a radius
alone can leave a query with no candidates, so here the pool of each query is:

1. every entry within Hamming distance `radius` (inclusive) of the query, when there are at
   least `n_candidates` of them (the pool may then be larger than `n_candidates`);
2. otherwise, the `n_candidates` nearest entries by (Hamming distance, id), i.e.
   ``index.search(query, n_candidates)``, which contains every entry within `radius` and is
   padded with the next-nearest ones (all entries, if the index holds fewer).

The pool is then ordered by the Euclidean distance between the query's feature and each
candidate's stored feature (computed in float32), ties broken by ascending id, and the first
`k` are returned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hashsearch.index.base import Index
from hashsearch.types import MISSING_ID, Codes, SearchResult
from hashsearch.validation import check_int

# Stored features are fetched in chunks of distinct ids holding about this many float32 values
# (64 MiB), so memory stays bounded whatever the pool sizes and feature dimension.
_CHUNK_VALUES = 1 << 24


def _candidates(index: Index, query_codes: Codes, radius: int, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool of every query as flat (query row, id) pairs, grouped by query in query order."""
    nq = len(query_codes)
    near = index.range_search(query_codes, radius)
    counts = np.diff(near.lims)
    fallback = counts < n_candidates
    pair_q = np.repeat(np.arange(nq), counts)
    keep = ~fallback[pair_q]
    qs, ids = [pair_q[keep]], [np.asarray(near.ids, np.int64)[keep]]
    if fallback.any():
        rows = np.flatnonzero(fallback)
        top = index.search(query_codes[rows], min(n_candidates, len(index)))
        found = top.ids != MISSING_ID
        qs.append(np.broadcast_to(rows[:, None], top.ids.shape)[found])
        ids.append(top.ids[found].astype(np.int64))
    pair_q, pair_id = np.concatenate(qs), np.concatenate(ids)
    order = np.argsort(pair_q, kind="stable")
    return pair_q[order], pair_id[order]


def coarse_to_fine(
    index: Index,
    query_codes: Codes,
    query_features: np.ndarray,
    feature_lookup: Callable[[np.ndarray], np.ndarray],
    k: int,
    radius: int = 2,
    n_candidates: int = 200,
) -> SearchResult:
    """Hamming candidates re-ranked by Euclidean feature distance (Lin et al.'s two-level search).

    Parameters
    ----------
    index
        Any index back end holding the database codes.
    query_codes
        Codes of the queries, (n_queries, ...) with the index's n_bits.
    query_features
        (n_queries, d) backbone features of the queries, the ones the codes were made from.
    feature_lookup
        ``feature_lookup(ids) -> (len(ids), d)`` stored features of database ids (any float
        dtype; float16 is fine, distances are computed in float32). It is called with sorted,
        distinct ids, each id in one call only.
    k
        Neighbours returned per query.
    radius
        Hamming radius of the coarse level (inclusive).
    n_candidates
        Pool size below which the radius pool is replaced by the `n_candidates` nearest
        entries by Hamming distance (see the module docstring for the exact rule).

    Returns
    -------
    SearchResult
        float32 Euclidean distances and int64 ids, (n_queries, k), sorted by (distance, id);
        slots beyond the pool size hold id -1 and distance +inf.
    """
    if not isinstance(index, Index):
        raise TypeError(f"index must be a hashsearch Index, got {type(index).__name__}")
    index._check_codes(query_codes, "query_codes")
    k = Index._check_k(k)
    radius = check_int("radius", radius, low=0)
    n_candidates = check_int("n_candidates", n_candidates, low=1)
    qf = np.asarray(query_features)
    if qf.ndim != 2 or len(qf) != len(query_codes):
        raise ValueError(
            f"query_features must be a (n_queries, d) array with one row per query code "
            f"({len(query_codes)}), got shape {qf.shape}"
        )
    if not np.issubdtype(qf.dtype, np.number):
        raise TypeError(f"query_features must be numeric, got dtype {qf.dtype}")
    qf = qf.astype(np.float32, copy=False)
    if not np.isfinite(qf).all():
        raise ValueError("query_features hold NaN or infinite values")
    nq, dim = qf.shape
    out_d = np.full((nq, k), np.inf, np.float32)
    out_i = np.full((nq, k), MISSING_ID, np.int64)
    if nq == 0 or len(index) == 0:
        return SearchResult(out_d, out_i)

    pair_q, pair_id = _candidates(index, query_codes, radius, n_candidates)
    dist = _feature_distances(pair_q, pair_id, qf, feature_lookup)
    starts = np.searchsorted(pair_q, np.arange(nq + 1))
    for q in np.flatnonzero(np.diff(starts)):
        a, b = starts[q], starts[q + 1]
        top = np.lexsort((pair_id[a:b], dist[a:b]))[:k]
        out_d[q, : len(top)] = dist[a:b][top]
        out_i[q, : len(top)] = pair_id[a:b][top]
    return SearchResult(out_d, out_i)


def _feature_distances(
    pair_q: np.ndarray, pair_id: np.ndarray, qf: np.ndarray, feature_lookup: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """float32 Euclidean distance of every (query, id) pair.

    Stored features are fetched (and cast to float32) once per distinct id, in chunks of
    distinct ids of about `_CHUNK_VALUES` values; within a chunk each query's pairs are one
    vectorised difference. Distances are direct differences, not the |a|^2 - 2ab + |b|^2
    expansion, so equal features give exactly equal distances and the id tie-break holds.
    """
    dim = qf.shape[1]
    dist = np.empty(len(pair_id), np.float32)
    if len(pair_id) == 0:
        return dist
    uniq, inv = np.unique(pair_id, return_inverse=True)
    rows_per_chunk = max(1, _CHUNK_VALUES // max(1, dim))
    chunk = inv // rows_per_chunk
    order = np.lexsort((pair_q, chunk))  # by chunk, then by query
    chunk_starts = np.searchsorted(chunk[order], np.arange((len(uniq) - 1) // rows_per_chunk + 2))
    for c in range(len(chunk_starts) - 1):
        a, b = chunk_starts[c], chunk_starts[c + 1]
        first = c * rows_per_chunk
        ids = uniq[first : first + rows_per_chunk]
        feats = np.asarray(feature_lookup(ids))
        if feats.shape != (len(ids), dim):
            raise ValueError(
                f"feature_lookup returned shape {feats.shape} for {len(ids)} ids; expected "
                f"({len(ids)}, {dim}) to match query_features"
            )
        feats = feats.astype(np.float32, copy=False)
        sel = order[a:b]
        qs = pair_q[sel]
        runs = np.flatnonzero(np.diff(qs)) + 1
        for s, e in zip(np.concatenate(([0], runs)), np.concatenate((runs, [len(sel)]))):
            diff = feats[inv[sel[s:e]] - first]
            diff -= qf[qs[s]]
            dist[sel[s:e]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return dist
