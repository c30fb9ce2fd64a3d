"""Retrieval metrics for Hamming ranking: mAP, tie-aware mAP, P@k, R@k, radius lookup, PR curves.

Every function here is pure (no printing, no files) and takes a distance matrix of shape
(n_queries, n_database) and a boolean relevance matrix of the same shape (see `relevance`).
Large matrices are processed a block of queries at a time, so temporaries stay near
`_BLOCK_ELEMENTS` elements whatever the number of queries.

Conventions
-----------
Ranking ("id-order" ties)
    For each query, database items are ranked by ascending distance, and items at equal
    distance by ascending database index (column index), exactly as the index back ends
    return them. Ties matter for Hamming ranking: a b-bit code has only b + 1 possible
    distances (17 for 16 bits), so with tens of thousands of database items almost every
    position of the ranking lies in a tie group, and how a tie group is ordered can move mAP
    by several points. `mean_average_precision` reports the deterministic id-order value;
    `tie_aware_map` reports the expected value when each tie group is in uniformly random
    order (McSherry & Najork, ECIR 2008), which does not depend on how the database happens
    to be ordered. Reporting both shows how much of a result is owed to tie breaking.

Queries with no relevant item
    A query with no relevant item in the whole database has no defined AP, precision or
    recall. It is *excluded* from every mean and counted in `n_excluded`; its entry in
    `per_query` is NaN. It is never scored 0 (that would penalise a method for the data).
    A query that has relevant items, but none among those retrieved (top k, or within the
    radius), scores 0: it retrieved nothing right.

Average precision at k
    AP@k = (1 / R_k) * sum_{i <= k} P(i) * rel(i), where P(i) is the precision of the top i
    and R_k the number of relevant items in the top k (the definition used by most hashing
    papers and their code, e.g. DeepHash-pytorch's ``CalcTopMap``); k=None means the whole
    database. A k larger than the database is clipped to its size; so is the k of P@k,
    whose denominator is then the database size.

Hamming-radius lookup
    Precision and recall within radius r count the items at distance <= r. A query whose
    ball is empty retrieved nothing: its precision is 0 (the literature's "precision within
    Hamming radius 2" counts a failed lookup as 0), its recall 0, and the fraction of such
    queries is reported beside. `pr_curve` uses the same convention at every radius, so its
    point at radius 2 equals `radius_precision_recall(radius=2)`; the precision averaged only
    over non-empty balls is ``precision / (1 - frac_empty)``, both being means over the same
    evaluated queries.

Multi-label relevance
    With multi-hot labels, a database item is relevant to a query when they share at least
    one label (the NUS-WIDE / MS-COCO convention).

Leave-one-out
    Where the database holds the queries themselves (the RITQ paper searches "within the query
    set itself by applying the leave-one-out procedure"), `evaluate`'s `exclude` names each
    query's own item, and every metric is that of the database without it: the item is ranked
    after every other one and counted as not relevant, outside every Hamming radius, and P@k
    divides by at most n_database - 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hashsearch.validation import check_int

# Queries are processed in blocks of about this many matrix elements (4M: a few tens of MB per
# temporary), so 10,000 x 50,000 evaluations stay far below 1 GB of extra memory.
_BLOCK_ELEMENTS = 1 << 22
# Grouping by distance uses one bin per distance value; Hamming distances are at most n_bits.
_MAX_DISTANCE_VALUE = 1 << 16


@dataclass(frozen=True, eq=False)
class MetricResult:
    """A metric averaged over the evaluated queries, with the value of each query.

    Attributes
    ----------
    value : float
        Mean of `per_query` over the queries that were not excluded (NaN if all were).
    per_query : numpy.ndarray
        float64 (n_queries,); NaN for excluded queries.
    n_excluded : int
        Number of queries excluded because no database item is relevant to them.
    """

    value: float
    per_query: np.ndarray
    n_excluded: int

    @property
    def n_queries(self) -> int:
        """Number of queries, excluded ones included."""
        return int(self.per_query.shape[0])


#: mAP results are ordinary metric results.
MAPResult = MetricResult


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Precision and recall within Hamming radius r, for r = 0, 1, ..., max_radius.

    Attributes
    ----------
    radii : numpy.ndarray
        int64 (n_radii,), the radii 0..max_radius.
    precision, recall : numpy.ndarray
        float64 (n_radii,), means over the evaluated queries; an empty ball has precision 0.
    frac_empty : numpy.ndarray
        float64 (n_radii,), fraction of evaluated queries whose ball is empty at that radius.
    n_excluded : int
        Queries excluded because no database item is relevant to them.
    """

    radii: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    frac_empty: np.ndarray
    n_excluded: int

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        return {
            "radii": [int(r) for r in self.radii],
            "precision": [_json_float(v) for v in self.precision],
            "recall": [_json_float(v) for v in self.recall],
            "frac_empty": [_json_float(v) for v in self.frac_empty],
        }


# --------------------------------------------------------------------------------------------
# Relevance
# --------------------------------------------------------------------------------------------


def _check_labels(labels, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 1:
        if arr.dtype.kind not in "iu":
            raise TypeError(
                f"{name} is 1-d, so it must hold integer class ids, got dtype {arr.dtype}; "
                "convert with .astype(np.int64), or pass a 2-d 0/1 array for multi-label data"
            )
        return arr
    if arr.ndim == 2:
        if arr.dtype.kind not in "biu" or (arr.size and not np.isin(arr, (0, 1)).all()):
            raise ValueError(
                f"{name} is 2-d, so it must be a multi-hot 0/1 array (n, n_classes); got dtype "
                f"{arr.dtype} with values other than 0 and 1. For single-label data pass a 1-d "
                "array of class ids"
            )
        return arr
    raise ValueError(
        f"{name} must be 1-d class ids (single-label) or a 2-d 0/1 array (multi-label), got shape {arr.shape}"
    )


def _check_label_pair(query_labels, db_labels) -> tuple[np.ndarray, np.ndarray]:
    q = _check_labels(query_labels, "query_labels")
    d = _check_labels(db_labels, "db_labels")
    if q.ndim != d.ndim:
        kind = {1: "single-label (1-d)", 2: "multi-label (2-d)"}
        raise ValueError(
            f"query_labels are {kind[q.ndim]} but db_labels are {kind[d.ndim]}; both must be "
            "1-d class ids or both 2-d multi-hot arrays"
        )
    if q.ndim == 2:
        if q.shape[1] != d.shape[1]:
            raise ValueError(
                f"query_labels have {q.shape[1]} classes but db_labels have {d.shape[1]}; "
                "multi-hot arrays must share the same class columns"
            )
        # float32 products are exact for shared-label counts below 2**24 and use BLAS.
        q, d = q.astype(np.float32), d.astype(np.float32)
    return q, d


def _relevance_rows(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Relevance of already-checked query labels `q` against database labels `d`."""
    if q.ndim == 1:
        return q[:, None] == d[None, :]
    return (q @ d.T) > 0


def relevance(query_labels, db_labels) -> np.ndarray:
    """Which database items are relevant to which queries, as a bool (n_queries, n_database) matrix.

    Parameters
    ----------
    query_labels, db_labels : array-like
        Either both 1-d integer class ids (single-label: relevant means same class), or both
        2-d multi-hot 0/1 arrays of shape (n, n_classes) (multi-label: relevant means at
        least one shared label).

    Examples
    --------
    >>> relevance([0, 1], [1, 0, 0]).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    >>> relevance([[1, 0, 1]], [[0, 0, 1], [0, 1, 0]]).tolist()
    [[True, False]]
    """
    q, d = _check_label_pair(query_labels, db_labels)
    return _relevance_rows(q, d)


# --------------------------------------------------------------------------------------------
# Input checks and blocking
# --------------------------------------------------------------------------------------------


def _check_inputs(distances, relevant) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances)
    if d.ndim != 2:
        raise ValueError(f"distances must be a 2-d (n_queries, n_database) array, got shape {d.shape}")
    if d.dtype.kind not in "iuf":
        raise TypeError(f"distances must be integers or floats, got dtype {d.dtype}")
    if d.dtype.kind == "f" and d.size and np.isnan(d).any():
        raise ValueError("distances contain NaN; rank-based metrics need every distance to be comparable")
    r = np.asarray(relevant)
    if r.shape != d.shape:
        raise ValueError(
            f"relevant has shape {r.shape} but distances have shape {d.shape}; they must match "
            "(build relevant with hashsearch.evaluation.relevance)"
        )
    if r.dtype != np.bool_:
        if r.dtype.kind not in "iu" or (r.size and not np.isin(r, (0, 1)).all()):
            raise TypeError(f"relevant must be a bool or 0/1 integer array, got dtype {r.dtype}")
        r = r.astype(bool)
    return d, r


def _require_small_ints(d: np.ndarray, what: str) -> None:
    if d.dtype.kind not in "iu":
        raise TypeError(
            f"{what} needs integer (Hamming) distances, got dtype {d.dtype}; for float distances "
            "use mean_average_precision, precision_at_k and recall_at_k"
        )
    if d.size:
        lo, hi = int(d.min()), int(d.max())
        if lo < 0 or hi > _MAX_DISTANCE_VALUE:
            raise ValueError(
                f"{what} needs small non-negative integer distances (0..{_MAX_DISTANCE_VALUE}), "
                f"got values from {lo} to {hi}"
            )


def _blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _mean(per_query: np.ndarray) -> float:
    keep = ~np.isnan(per_query)
    return float(per_query[keep].mean()) if keep.any() else float("nan")


def _result(per_query: np.ndarray, n_relevant: np.ndarray) -> MetricResult:
    per_query = per_query.astype(np.float64, copy=True)
    per_query[n_relevant == 0] = np.nan
    return MetricResult(_mean(per_query), per_query, int(np.count_nonzero(n_relevant == 0)))


def _json_float(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------------------------
# Block kernels: each takes one block of queries and returns per-query numbers
# --------------------------------------------------------------------------------------------


def _sorted_relevance(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Relevance in ranking order: ascending distance, ties by ascending database index."""
    key = d
    if d.dtype.kind in "iu" and d.size:
        lo, hi = int(d.min()), int(d.max())
        # NumPy's stable sort of 8- or 16-bit keys is a radix sort, much cheaper than a merge
        # sort of int32 keys; distances shifted to start at 0 fit in one of those widths.
        if hi - lo <= 0xFF:
            key = (d - lo).astype(np.uint8)
        elif hi - lo <= 0xFFFF:
            key = (d.astype(np.int64) - lo).astype(np.uint16)
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(r, order, axis=1)


def _ap_sorted(rs: np.ndarray, k: int | None) -> np.ndarray:
    """AP@k of each row of ranked relevance `rs` (0 where nothing relevant is in the top k)."""
    nb, nd = rs.shape
    kk = nd if k is None else min(k, nd)
    rows, cols = np.nonzero(rs[:, :kk])
    found = np.bincount(rows, minlength=nb)
    # np.nonzero is row-major, so the j-th hit of a row is its j-th relevant item: P = j / rank.
    first = np.cumsum(found) - found
    nth = np.arange(rows.size) - first[rows] + 1
    num = np.bincount(rows, weights=nth / (cols + 1.0), minlength=nb)
    return np.divide(num, found, out=np.zeros(nb), where=found > 0)


def _hits_at(rs: np.ndarray, k: int) -> np.ndarray:
    return np.count_nonzero(rs[:, : min(k, rs.shape[1])], axis=1)


def _distance_histograms(d: np.ndarray, r: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, how many items (and how many relevant ones) lie at each distance 0..n_values-1."""
    nb = d.shape[0]
    idx = d.astype(np.intp) + (np.arange(nb, dtype=np.intp) * n_values)[:, None]
    count = np.bincount(idx.ravel(), minlength=nb * n_values).reshape(nb, n_values)
    rel = np.bincount(idx[r], minlength=nb * n_values).reshape(nb, n_values)
    return count, rel


def _harmonic(n: int) -> np.ndarray:
    """H[j] = sum_{i=1..j} 1/i for j = 0..n."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def _tie_aware_ap_hist(count: np.ndarray, rel: np.ndarray, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP@all under random order within tie groups, from per-distance histograms.

    A tie group of n items, r relevant, after N items of which R are relevant, contributes
    sum_{s=1..n} (r/n) (R + 1 + (s-1)(r-1)/(n-1)) / (N+s) to the AP numerator: position N+s
    holds a relevant item with probability r/n, and then the expected number of relevant items
    above it in the group is (s-1)(r-1)/(n-1). With dH = H(N+n) - H(N):
    sum_s 1/(N+s) = dH and sum_s (s-1)/(N+s) = n - (N+1) dH.
    """
    n = count.astype(np.float64)
    r = rel.astype(np.float64)
    N = np.cumsum(count, axis=1) - count
    R = np.cumsum(r, axis=1) - r
    dH = harmonic[N + count] - harmonic[N]
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(n > 1, (r - 1) / (n - 1) * (n - (N + 1) * dH), 0.0)
        contrib = np.where(rel > 0, r / n * ((R + 1) * dH + within), 0.0)
    total = rel.sum(axis=1)
    return np.divide(contrib.sum(axis=1), total, out=np.zeros(len(total)), where=total > 0)


def _radius_from_hist(count: np.ndarray, rel: np.ndarray, radii: np.ndarray):
    """Retrieved and relevant-retrieved counts within each radius, shape (n_queries, n_radii)."""
    cols = np.minimum(radii, count.shape[1] - 1)
    return np.cumsum(count, axis=1)[:, cols], np.cumsum(rel, axis=1)[:, cols]


def _lookup_scores(retrieved: np.ndarray, hits: np.ndarray, n_relevant: np.ndarray):
    """Per-query precision (0 for an empty ball) and recall; NaN rows for excluded queries."""
    precision = np.divide(hits, retrieved, out=np.zeros(retrieved.shape), where=retrieved > 0)
    nr = n_relevant.reshape((-1,) + (1,) * (hits.ndim - 1))
    recall = np.divide(hits, nr, out=np.zeros(hits.shape), where=nr > 0)
    empty = (retrieved == 0).astype(np.float64)
    for a in (precision, recall, empty):
        a[n_relevant == 0] = np.nan
    return precision, recall, empty


# --------------------------------------------------------------------------------------------
# Public metrics
# --------------------------------------------------------------------------------------------


def mean_average_precision(distances, relevant, k: int | None = None) -> MetricResult:
    """Mean average precision at k of a ranking by distance, ties broken by database index.

    Parameters
    ----------
    distances : array-like, (n_queries, n_database)
        Integer (Hamming) or float distances; smaller is nearer.
    relevant : array-like of bool, (n_queries, n_database)
        Ground truth, e.g. from `relevance`.
    k : int or None
        Cut-off; None ranks the whole database (mAP@all).

    Returns
    -------
    MetricResult
        AP@k = (1/R_k) sum_{i<=k} P(i) rel(i) per query; queries with no relevant item in
        the database are excluded (NaN, counted in `n_excluded`); queries with relevant items
        but none in the top k score 0.

    Examples
    --------
    >>> mean_average_precision([[0, 1, 1, 2]], [[1, 0, 1, 1]]).value  # (1 + 2/3 + 3/4) / 3
    0.8055555555555555
    """
    k = check_int("k", k, low=1, allow_none=True, none_means="whole database")
    d, r = _check_inputs(distances, relevant)
    ap = np.zeros(d.shape[0])
    for b in _blocks(*d.shape):
        ap[b] = _ap_sorted(_sorted_relevance(d[b], r[b]), k)
    return _result(ap, np.count_nonzero(r, axis=1))


def tie_aware_map(distances, relevant) -> MetricResult:
    """Expected mAP@all when items at equal distance come in uniformly random order.

    The exact closed form of McSherry & Najork (2008), computed from a histogram of distances
    per query, so it costs no sort. It does not depend on the order of the database, unlike
    `mean_average_precision`, which breaks ties by database index.

    Parameters
    ----------
    distances : array-like of int, (n_queries, n_database)
        Small non-negative integers (Hamming distances).
    relevant : array-like of bool, (n_queries, n_database)

    Returns
    -------
    MetricResult
        Queries with no relevant item are excluded, as in `mean_average_precision`.

    Examples
    --------
    >>> round(tie_aware_map([[0, 1, 1, 2]], [[1, 0, 1, 1]]).value, 6)  # mean of 0.80556 and 0.91667
    0.861111
    """
    d, r = _check_inputs(distances, relevant)
    _require_small_ints(d, "tie_aware_map")
    harmonic = _harmonic(d.shape[1])
    ap = np.zeros(d.shape[0])
    for b in _blocks(*d.shape):
        db = d[b]
        n_values = int(db.max()) + 1 if db.size else 1
        ap[b] = _tie_aware_ap_hist(*_distance_histograms(db, r[b], n_values), harmonic)
    return _result(ap, np.count_nonzero(r, axis=1))


def precision_at_k(distances, relevant, k: int) -> MetricResult:
    """Mean precision of the top k (id-order ties); queries with no relevant item are excluded.

    A k larger than the database is clipped to the database size.

    Examples
    --------
    >>> precision_at_k([[0, 1, 1, 2]], [[1, 0, 1, 1]], k=2).value
    0.5
    """
    k = check_int("k", k, low=1)
    d, r = _check_inputs(distances, relevant)
    kk = max(1, min(k, d.shape[1]))
    p = np.zeros(d.shape[0])
    for b in _blocks(*d.shape):
        p[b] = _hits_at(_sorted_relevance(d[b], r[b]), k) / kk
    return _result(p, np.count_nonzero(r, axis=1))


def recall_at_k(distances, relevant, k: int) -> MetricResult:
    """Mean fraction of a query's relevant items found in its top k (id-order ties).

    Queries with no relevant item are excluded.

    Examples
    --------
    >>> recall_at_k([[0, 1, 1, 2]], [[1, 0, 1, 1]], k=2).value
    0.3333333333333333
    """
    k = check_int("k", k, low=1)
    d, r = _check_inputs(distances, relevant)
    n_relevant = np.count_nonzero(r, axis=1)
    hits = np.zeros(d.shape[0])
    for b in _blocks(*d.shape):
        hits[b] = _hits_at(_sorted_relevance(d[b], r[b]), k)
    rec = np.divide(hits, n_relevant, out=np.zeros(len(hits)), where=n_relevant > 0)
    return _result(rec, n_relevant)


def radius_precision_recall(distances, relevant, radius: int = 2) -> tuple[MetricResult, MetricResult, float]:
    """Precision and recall of a lookup within distance `radius` (inclusive).

    Parameters
    ----------
    distances : array-like, (n_queries, n_database)
    relevant : array-like of bool, (n_queries, n_database)
    radius : int
        Items at distance <= radius are retrieved.

    Returns
    -------
    precision : MetricResult
        An empty ball (nothing retrieved) scores 0.
    recall : MetricResult
    frac_empty : float
        Fraction of evaluated (non-excluded) queries whose ball is empty.

    Examples
    --------
    >>> p, r, empty = radius_precision_recall([[0, 1, 3, 3], [3, 4, 4, 5]],
    ...                                       [[1, 0, 1, 0], [1, 0, 0, 0]], radius=2)
    >>> p.value, r.value, empty  # query 0: P 1/2, R 1/2; query 1: empty ball, P 0, R 0
    (0.25, 0.25, 0.5)
    """
    radius = check_int("radius", radius, low=0)
    d, r = _check_inputs(distances, relevant)
    n_relevant = np.count_nonzero(r, axis=1)
    retrieved = np.zeros(d.shape[0], np.int64)
    hits = np.zeros(d.shape[0], np.int64)
    for b in _blocks(*d.shape):
        inside = d[b] <= radius
        retrieved[b] = np.count_nonzero(inside, axis=1)
        hits[b] = np.count_nonzero(inside & r[b], axis=1)
    precision, recall, empty = _lookup_scores(retrieved, hits, n_relevant)
    return _result(precision, n_relevant), _result(recall, n_relevant), _mean(empty)


def pr_curve(distances, relevant, max_radius: int | None = None) -> PRCurve:
    """Precision and recall within Hamming radius r, for every r from 0 to `max_radius`.

    Parameters
    ----------
    distances : array-like of int, (n_queries, n_database)
        Small non-negative integers (Hamming distances).
    relevant : array-like of bool, (n_queries, n_database)
    max_radius : int or None
        Last radius; None uses the largest distance present (pass n_bits for a curve that
        spans every possible Hamming radius). At any radius >= the largest distance, recall is 1.

    Returns
    -------
    PRCurve
        Means over evaluated queries, with the conventions of `radius_precision_recall`
        (an empty ball has precision 0), so the curve at radius r equals its result.
    """
    d, r = _check_inputs(distances, relevant)
    _require_small_ints(d, "pr_curve")
    if max_radius is None:
        max_radius = int(d.max()) if d.size else 0
    max_radius = check_int("max_radius", max_radius, low=0)
    radii = np.arange(max_radius + 1)
    n_relevant = np.count_nonzero(r, axis=1)
    retrieved = np.zeros((d.shape[0], radii.size), np.int64)
    hits = np.zeros((d.shape[0], radii.size), np.int64)
    for b in _blocks(*d.shape):
        db = d[b]
        n_values = int(db.max()) + 1 if db.size else 1
        retrieved[b], hits[b] = _radius_from_hist(*_distance_histograms(db, r[b], n_values), radii)
    return _curve(radii, *_lookup_scores(retrieved, hits, n_relevant), n_relevant)


def _curve(radii, precision, recall, empty, n_relevant) -> PRCurve:
    keep = n_relevant > 0
    nan = np.full(radii.size, np.nan)
    mean = (lambda a: a[keep].mean(axis=0)) if keep.any() else (lambda a: nan)
    return PRCurve(radii, mean(precision), mean(recall), mean(empty), int(np.count_nonzero(~keep)))


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def _check_ks(ks) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    out: list[int] = []
    for k in ks:
        k = check_int("each entry of ks", k, low=1)
        if k not in out:
            out.append(k)
    return out


class _Accumulator:
    """Per-query numbers of every metric, filled one block of queries at a time."""

    def __init__(self, n_queries: int, n_database: int, k_map, ks, radius, max_radius, integer: bool, n_left_out=None):
        self.k_map, self.ks, self.radius, self.integer = k_map, ks, radius, integer
        self.n_database = n_database
        # Per query, 1 where leave-one-out removed the query's own item from its database.
        self.n_left_out = np.zeros(n_queries, np.int64) if n_left_out is None else n_left_out
        self.n_relevant = np.zeros(n_queries, np.int64)
        self.ap = np.zeros(n_queries)
        self.hits = {k: np.zeros(n_queries) for k in ks}
        if integer:
            self.radii = np.arange(max(max_radius, radius) + 1)
            self.harmonic = _harmonic(n_database)
            self.ap_tie = np.zeros(n_queries)
            self.retrieved = np.zeros((n_queries, self.radii.size), np.int64)
            self.found = np.zeros((n_queries, self.radii.size), np.int64)

    def add(self, rows: slice, d: np.ndarray, r: np.ndarray) -> None:
        self.n_relevant[rows] = np.count_nonzero(r, axis=1)
        rs = _sorted_relevance(d, r)
        self.ap[rows] = _ap_sorted(rs, self.k_map)
        for k in self.ks:
            self.hits[k][rows] = _hits_at(rs, k)
        del rs
        if self.integer:
            n_values = int(d.max()) + 1 if d.size else 1
            count, rel = _distance_histograms(d, r, n_values)
            self.ap_tie[rows] = _tie_aware_ap_hist(count, rel, self.harmonic)
            self.retrieved[rows], self.found[rows] = _radius_from_hist(count, rel, self.radii)

    def result(self) -> dict:
        nr = self.n_relevant
        f = _json_float
        out: dict = {
            "map": f(_result(self.ap, nr).value),
            "map_at": self.k_map,
            "map_tie_aware": None,
        }
        if self.integer:
            out["map_tie_aware"] = f(_result(self.ap_tie, nr).value)
        searched = np.maximum(1, self.n_database - self.n_left_out)  # items each query was ranked against
        for k in self.ks:
            out[f"p@{k}"] = f(_result(self.hits[k] / np.minimum(k, searched), nr).value)
        for k in self.ks:
            rec = np.divide(self.hits[k], nr, out=np.zeros(len(nr)), where=nr > 0)
            out[f"r@{k}"] = f(_result(rec, nr).value)
        rad = self.radius
        out[f"precision_r{rad}"] = out[f"recall_r{rad}"] = out[f"frac_empty_r{rad}"] = None
        out["pr_curve"] = None
        if self.integer:
            precision, recall, empty = _lookup_scores(self.retrieved, self.found, nr)
            out[f"precision_r{rad}"] = f(_mean(precision[:, rad]))
            out[f"recall_r{rad}"] = f(_mean(recall[:, rad]))
            out[f"frac_empty_r{rad}"] = f(_mean(empty[:, rad]))
            out["pr_curve"] = _curve(self.radii, precision, recall, empty, nr).to_dict()
        out["n_queries"] = int(len(nr))
        out["n_database"] = int(self.n_database)
        out["n_excluded"] = int(np.count_nonzero(nr == 0))
        if self.n_left_out.any():
            out["n_left_out"] = int(self.n_left_out.sum())
        return out


def evaluate_distances(
    distances,
    relevant,
    k_map: int | None = None,
    ks: Sequence[int] = (100, 1000),
    radius: int = 2,
    max_radius: int | None = None,
) -> dict:
    """Every metric of a precomputed distance matrix, as a JSON-able dict.

    Integer distances are treated as Hamming distances and get every metric. Float distances
    (e.g. a re-ranking by feature distance, where ties do not arise) get the ranking metrics
    only; the tie-aware mAP, radius metrics and PR curve are then None.

    Parameters
    ----------
    distances : array-like, (n_queries, n_database)
    relevant : array-like of bool, (n_queries, n_database)
    k_map : int or None
        Cut-off of "map"; None is mAP@all.
    ks : sequence of int
        Cut-offs of "p@k" and "r@k".
    radius : int
        Radius of "precision_r{radius}", "recall_r{radius}" and "frac_empty_r{radius}".
    max_radius : int or None
        Last radius of the PR curve; None uses the largest distance present.

    Returns
    -------
    dict
        ``map`` (AP@k_map, id-order ties), ``map_at`` (k_map), ``map_tie_aware`` (expected
        AP@all under random tie order), ``p@{k}`` and ``r@{k}`` for each k,
        ``precision_r{radius}``, ``recall_r{radius}``, ``frac_empty_r{radius}``, ``pr_curve``
        ({"radii", "precision", "recall", "frac_empty"} lists), ``n_queries``, ``n_database``,
        ``n_excluded``. Metric values are floats, or None where undefined (every query
        excluded) or not applicable (float distances).
    """
    k_map = check_int("k_map", k_map, low=1, allow_none=True, none_means="whole database")
    ks = _check_ks(ks)
    radius = check_int("radius", radius, low=0)
    d, r = _check_inputs(distances, relevant)
    integer = d.dtype.kind in "iu"
    if integer:
        _require_small_ints(d, "evaluate_distances")
        if max_radius is None:
            max_radius = int(d.max()) if d.size else 0
        max_radius = check_int("max_radius", max_radius, low=0)
    acc = _Accumulator(d.shape[0], d.shape[1], k_map, ks, radius, max_radius or 0, integer)
    for b in _blocks(*d.shape):
        acc.add(b, d[b], r[b])
    return acc.result()


def _check_exclude(exclude, n_queries: int, n_database: int) -> np.ndarray:
    """`evaluate`'s `exclude` as int64 (n_queries,), each -1 or a database index."""
    e = np.asarray(exclude)
    if e.shape != (n_queries,) or (e.size and e.dtype.kind not in "iu"):
        raise ValueError(
            f"exclude must be integer database indices of shape ({n_queries},), one per query (-1: none), "
            f"got dtype {e.dtype} and shape {e.shape}"
        )
    e = e.astype(np.int64)
    if e.size and (e.min() < -1 or e.max() >= n_database):
        raise ValueError(
            f"exclude holds {int(e.min())} to {int(e.max())}; each entry must be -1 (none) or a database index "
            f"0..{n_database - 1}"
        )
    return e


def evaluate(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    k_map: int | None = None,
    ks: Sequence[int] = (100, 1000),
    radius: int = 2,
    exclude=None,
) -> dict:
    """Every metric of Hamming ranking of `db_codes` for `query_codes`, as a JSON-able dict.

    Distances are computed once, a block of queries at a time (so a 10,000 x 50,000
    evaluation never holds the whole distance matrix), with `hashsearch.codes.hamming_distances`;
    the PR curve spans radii 0..n_bits.

    Parameters
    ----------
    query_codes, db_codes : hashsearch.types.Codes
        Codes of the same length.
    query_labels, db_labels : array-like
        1-d class ids or 2-d multi-hot arrays; see `relevance`.
    k_map, ks, radius
        As in `evaluate_distances`.
    exclude : array-like of int, (n_queries,), optional
        Leave-one-out: the database index of each query's own item, or -1 for none. That item
        is left out of the query's ranking, every metric being that of the database without it
        (see "Leave-one-out" in the module docstring).

    Returns
    -------
    dict
        The keys of `evaluate_distances`, plus ``n_bits``, and with `exclude` ``n_left_out``
        (how many queries had their own item left out).

    Raises
    ------
    ValueError
        Mismatched code lengths or label counts, or an `exclude` of the wrong shape or with an
        index outside -1..n_database-1.
    """
    from hashsearch.codes import hamming_distances
    from hashsearch.types import Codes

    for name, c in (("query_codes", query_codes), ("db_codes", db_codes)):
        if not isinstance(c, Codes):
            raise TypeError(
                f"{name} must be hashsearch.types.Codes, got {type(c).__name__}; pack bits with hashsearch.codes.pack_bits"
            )
    if query_codes.n_bits != db_codes.n_bits:
        raise ValueError(f"query_codes have {query_codes.n_bits} bits but db_codes have {db_codes.n_bits}")
    k_map = check_int("k_map", k_map, low=1, allow_none=True, none_means="whole database")
    ks = _check_ks(ks)
    radius = check_int("radius", radius, low=0)
    q, dl = _check_label_pair(query_labels, db_labels)
    for name, labels, codes in (("query_labels", q, query_codes), ("db_labels", dl, db_codes)):
        if labels.shape[0] != len(codes):
            raise ValueError(
                f"{name} has {labels.shape[0]} rows but there are {len(codes)} codes; give one label per code"
            )
    nq, nd = len(query_codes), len(db_codes)
    own = None if exclude is None else _check_exclude(exclude, nq, nd)
    acc = _Accumulator(
        nq, nd, k_map, ks, radius, query_codes.n_bits, integer=True, n_left_out=None if own is None else own >= 0
    )
    far = query_codes.n_bits + 1  # beyond every Hamming distance: ranked last, outside every radius
    for b in _blocks(nq, nd):
        d = hamming_distances(query_codes[b], db_codes)
        r = _relevance_rows(q[b], dl)
        if own is not None:
            rows = np.flatnonzero(own[b] >= 0)
            d[rows, own[b][rows]] = far
            r[rows, own[b][rows]] = False
        acc.add(b, d, r)
    out = acc.result()
    out["n_bits"] = int(query_codes.n_bits)
    return out
