"""Exact and near-duplicate images of a collection, in groups, with the one to keep in each.

Exact duplicates share a content digest (the BLAKE2b digest the indexer stores for every file).
Near-duplicates (re-encoded, resized, lightly cropped, recoloured, watermarked, bordered) have
codes within a small Hamming radius: every code's neighbours within it come from one radius
search, by multi-index hashing (`hashsearch.index.mih`: sub-quadratic for small radii) or, where
the radius takes in so many pairs that a linear scan is faster (timed on a sample: `near_pairs`),
by a scan; each pair found may also have to pass a cosine-similarity test on the stored features. The
pairs are joined into groups by complete linkage: most similar pair first, and two groups are
joined only when every pair across them passes the same tests (within the radius, similarity at
least the threshold, or the same bytes). So every two images of a group pass the test: a chain
A~B, B~C with A and C far apart is not one group (C joins B only if C also passes with A).

The similarity test is a cosine on *whitened* features: centred, rotated onto the principal axes
of the collection's own features and each axis divided by the square root of (its variance + the
mean variance). A backbone's raw features are dominated by a few directions that say what the
photo shows (two daisies are close); whitening weighs the many directions that tell one photo
from another, and the added mean variance (shrinkage) keeps the weak, noisy axes from dominating.
The threshold and radius defaults come from the sweep in benchmarks/results/duplicates-tuning.md
(a set generated apart from the reported ones). No labels are used. That set is mostly unrelated
small images; in a folder of real photos of one subject, look-alike photos that are not copies
pass at 0.4 far more often (two irises at 0.46 in a 20-photo folder), and a user moving or
deleting what is grouped loses a photo. So the default depends on the number of images
(`default_min_similarity`): 0.4 from `SMALL_COLLECTION` (4,000) images on, as before, rising as
the collection shrinks to 0.5 at 1,000 images and fewer, chosen on folders of 30 to 800 flowers12
photos with planted copies (benchmarks/duplicates.py --small: rules compared on seeds 100 and
101, the default reported on seeds 0 and 1 in benchmarks/results/duplicates-small.md). It trades a few copies found for far fewer groups of different photos; groups
that pass only narrowly are named by `DuplicateReport.narrow_groups`.

    >>> from hashsearch.collection import Collection
    >>> report = find_duplicates(Collection.open("photos.hsx"))   # doctest: +SKIP
    >>> [[m.key for m in g.members] for g in report.groups]          # doctest: +SKIP
    [['daisy/a.jpg', 'copies/a-small.jpg']]

See docs/duplicates.md for the command line and the HTTP route built on it.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import numpy as np

from hashsearch.types import Codes
from hashsearch.validation import check_choice, check_int, check_real

#: The rules that pick the image to keep in a group (see `choose_keep`).
KEEP_RULES = ("largest", "oldest", "newest", "shortest-path")

#: Default radius as a share of the code length: measured on the near-duplicate benchmark
#: (benchmarks/duplicates.py; see benchmarks/results/duplicates.md for the sweep).
RADIUS_SHARE = 0.25
#: Default radius as a share of the code length with codes only (no feature check: `--codes-only`,
#: or a collection that stores no features): 2 of 64 bits. At a quarter of the bits the codes alone
#: put 87% of the images of a folder of photos in a group (precision 0.10); no radius is safe: at
#: radius 2, precision 0.94 in small folders of flowers12 photos and 0.18 at 10,000 mixed images, at
#: radius 0 still 0.99 and 0.29 (benchmarks/results/duplicates-codes-only-small.md and
#: duplicates-codes-only-10000.md). 2 is the best F1 of the 10,000 images and, in the small
#: folders, near the best (radius 3-4, at 2 to 4 times the groups of different photos).
CODES_ONLY_RADIUS_SHARE = 1 / 32
#: Default whitened-cosine threshold where features are stored: the best F1 with RADIUS_SHARE and
#: complete-linkage groups on a set kept apart for choosing it (benchmarks/duplicates.py --seed 1
#: --cifar-first test: benchmarks/results/duplicates-tuning.md), not on the sets reported.
MIN_SIMILARITY = 0.4
#: Collections of at least this many images get `MIN_SIMILARITY` by default; smaller ones a higher
#: threshold (`default_min_similarity`), measured on folders of real photos:
#: benchmarks/results/duplicates-small.md.
SMALL_COLLECTION = 4000
#: The threshold rises by this much each time the number of images halves below `SMALL_COLLECTION`...
SMALL_SLOPE = 0.05
#: ... up to this.
SMALL_MAX = 0.5
#: A group "passes narrowly" when a member's similarity to the kept image is less than this above
#: the threshold: a fresh user's groups of different photos lay at 0.41-0.49 at 0.4 (the
#: small-folder benchmark counts the groups it flags, false and true apart).
NARROW_MARGIN = 0.1

#: How the radius search runs: "mih" (multi-index hashing), "flat" (a linear scan), or "auto"
#: (the faster of the two on a sample of the queries; see `near_pairs`).
SEARCHES = ("auto", "mih", "flat")
# Below this many codes "auto" takes multi-index hashing without timing (both take well under a second).
_AUTO_MIN = 8192
# Queries of the sample "auto" times each search on.
_AUTO_SAMPLE = 256

# Queries per radius search: bounds the memory of one RangeResult and of the pairs checked at
# once (at the default radius a query finds a few per cent of the collection within it).
_CHUNK = 2048
# Pairs whose first rows lie in one tile of this many rows are checked together, by second row:
# each second row is then read from memory once per tile instead of once per pair.
_TILE = 256


def default_radius(n_bits: int, codes_only: bool = False) -> int:
    """The Hamming radius of a near-duplicate pair at `n_bits`: `RADIUS_SHARE` of it (16 of 64) with
    the feature check, `CODES_ONLY_RADIUS_SHARE` (2 of 64) with `codes_only`; at least 1."""
    share = CODES_ONLY_RADIUS_SHARE if codes_only else RADIUS_SHARE
    return max(1, round(share * check_int("n_bits", n_bits, low=1)))


def default_min_similarity(n_images: int) -> float:
    """The default whitened-similarity threshold of a collection of `n_images` images.

    `MIN_SIMILARITY` (0.4) from `SMALL_COLLECTION` images on; below, ``0.4 + SMALL_SLOPE *
    log2(SMALL_COLLECTION / n_images)``, at most `SMALL_MAX`. In a small folder of real photos
    (one subject, one camera) look-alike photos that are not copies pass at 0.4 far more often
    than in the large mixed sets 0.4 was chosen on (benchmarks/results/duplicates-small.md); at
    `SMALL_COLLECTION` images and more the default is 0.4 exactly, as before.

    Raises ValueError if `n_images` is not an integer >= 0.
    """
    import math

    n = check_int("n_images", n_images, low=0)
    if n >= SMALL_COLLECTION:
        return MIN_SIMILARITY
    rise = SMALL_SLOPE * math.log2(SMALL_COLLECTION / max(n, 1))
    return round(min(SMALL_MAX, MIN_SIMILARITY + rise), 4)


def near_pairs(
    codes: Codes, radius: int, n_threads: int | None = None, search: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows whose codes are within Hamming `radius` (inclusive), each pair once.

    A radius search of every code against all of them, in chunks of queries: by multi-index
    hashing (sub-quadratic in the number of codes for small radii) or by a linear scan. At a
    quarter of the bits (the default radius) a collection of photos has a few per cent of all
    pairs within it, and multi-index hashing then enumerates more candidates than a scan reads
    codes; "auto" times both on a sample of the queries and runs the faster (the pairs are the
    same: both are exact).

    Parameters
    ----------
    codes : Codes
        n packed codes.
    radius : int
        0 to n_bits.
    search : str
        One of `SEARCHES`.

    Returns
    -------
    (i, j, distance) : three int64 arrays of shape (n_pairs,)
        Row numbers with i < j, and their Hamming distance; sorted by (i, j).

    Raises
    ------
    ValueError
        If `radius` is not an integer in [0, n_bits], or `search` is not one of `SEARCHES`.
    """
    radius = check_int("radius", radius, low=0, high=codes.n_bits, note=f"n_bits={codes.n_bits}")
    check_choice("search", search, SEARCHES)
    parts = list(_near_pair_chunks(codes, radius, n_threads, search))
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return tuple(np.concatenate(p) for p in zip(*parts))


def _near_pair_chunks(codes: Codes, radius: int, n_threads: int | None, search: str = "auto", stats=None):
    """`near_pairs` a chunk of first rows at a time: yields (i, j, distance), each sorted by (i, j),
    the chunks in row order. A caller that filters each chunk never holds every pair at once.
    Sets stats["search method"] to the search run."""
    n = len(codes)
    index = _search_index(codes, radius, n_threads, search)
    if stats is not None:
        stats["search method"] = "mih" if type(index).__name__ == "MIHIndex" else "flat"
    for a in range(0, n, _CHUNK):
        res = index.range_search(codes[a : a + _CHUNK], radius)
        counts = np.diff(res.lims)
        qi = np.repeat(np.arange(a, a + len(counts), dtype=np.int64), counts)
        j = res.ids.astype(np.int64)
        later = j > qi
        i, j, d = qi[later], j[later], res.distances[later].astype(np.int64)
        order = np.lexsort((j, i))
        yield i[order], j[order], d[order]


def _search_index(codes: Codes, radius: int, n_threads: int | None, search: str):
    """The index of `codes` (ids = rows) that runs the radius search: see `near_pairs`."""
    from hashsearch.index.flat import FlatIndex
    from hashsearch.index.mih import MIHIndex

    ids = np.arange(len(codes), dtype=np.int64)
    mih = None
    if search != "flat":
        mih = MIHIndex(codes.n_bits, n_threads=n_threads)
        mih.add(codes, ids)
        if search == "mih" or len(codes) < _AUTO_MIN:
            return mih
    flat = FlatIndex(codes.n_bits, n_threads=n_threads)
    flat.add(codes, ids)
    if mih is None:
        return flat
    sample = codes[np.linspace(0, len(codes) - 1, _AUTO_SAMPLE).astype(np.int64)]
    seconds = []
    for index in (mih, flat):
        index.range_search(sample[:1], radius)  # builds the tables and loads the compiled kernels: not timed
        t = time.perf_counter()
        index.range_search(sample, radius)
        seconds.append(time.perf_counter() - t)
    return mih if seconds[0] <= seconds[1] else flat


def whiten(features: np.ndarray, shrinkage: float = 1.0, max_fit: int = 20_000, seed: int = 0) -> np.ndarray:
    """Features whitened over themselves, with shrinkage (see the module docstring): (n, d') float32.

    ``(x - mean) @ V / sqrt(var + shrinkage * mean(var))``, V the principal axes and var their
    variances, estimated on at most `max_fit` rows drawn at random (`seed`); d' = d. Unit-length rows are not needed: `cosine_of_pairs` normalises.
    """
    x = np.asarray(features, np.float32)
    if len(x) < 2:
        return np.zeros((len(x), 1), np.float32)
    fit = x if len(x) <= max_fit else x[np.random.default_rng(seed).choice(len(x), max_fit, replace=False)]
    mean = fit.mean(axis=0, dtype=np.float64)
    centred = np.asarray(fit, np.float64) - mean
    # Eigenvectors of the d x d scatter matrix: the SVD's axes at a fraction of its cost when n >> d.
    var, axes = np.linalg.eigh(centred.T @ centred / len(fit))
    var = np.clip(var, 0.0, None)
    # The mean over the axes the rows span (at most n - 1 of them): with fewer rows than dimensions,
    # the empty axes would otherwise pull the shrinkage towards 0 and whiten the noise.
    spanned = np.sort(var)[::-1][: max(1, min(len(fit) - 1, len(var)))]
    w = (axes / np.sqrt(var + shrinkage * max(float(spanned.mean()), 1e-12))).astype(np.float32)
    mean32 = mean.astype(np.float32)
    out = np.empty((len(x), w.shape[1]), np.float32)
    for a in range(0, len(x), 1 << 15):
        out[a : a + (1 << 15)] = (x[a : a + (1 << 15)] - mean32) @ w
    return out


@dataclass(frozen=True, eq=False)
class Whitened:
    """A collection's stored features whitened over themselves (`whiten`), one row per id.

    Attributes
    ----------
    ids : np.ndarray
        The collection's ids, sorted (int64, (n,)).
    features : np.ndarray
        Their whitened features scaled to unit length (float32, (n, d)), row k for ``ids[k]``:
        the dot product of two rows is their cosine.
    """

    ids: np.ndarray
    features: np.ndarray


def whiten_collection(coll) -> Whitened | None:
    """The whitened stored features of every image of `coll` (`Collection`); None when it stores none.

    It costs an eigendecomposition of the d x d scatter matrix and an (n, d) x (d, d) product
    (1.4 s at 10,000 images: the line "find_duplicates stages" of benchmarks/duplicates.py prints
    it). It depends only on the collection's
    contents, so a caller that asks for duplicates again and again (the HTTP service) computes it
    once per state of the collection and passes it to `find_duplicates`; the result is the same.
    """
    if not coll.store_features:
        return None
    ids = np.sort(np.asarray(coll.index.ids, np.int64))
    if not len(ids):
        return Whitened(ids, np.zeros((0, 1), np.float32))
    return Whitened(ids, _to_unit(whiten(coll.features_of(ids))))


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows of `features` (n, d) scaled to unit length: (n, d) float32, a new array; zero rows stay zero."""
    return _to_unit(np.array(features, np.float32, copy=True))


def _to_unit(x: np.ndarray) -> np.ndarray:
    """Scale the rows of float32 `x` to unit length in place; returns `x`."""
    for a in range(0, len(x), 1 << 15):
        block = x[a : a + (1 << 15)]
        norms = np.linalg.norm(block, axis=1)
        norms[norms == 0] = 1.0
        block /= norms[:, None]
    return x


def pair_dots(x: np.ndarray, i: np.ndarray, j: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """Dot products of rows i and j of `x` (n, d): float32, (n_pairs,); the cosines when the rows
    have unit length (`unit_rows`).

    Compiled (numba), on `n_threads` threads (default: every core this process may use), with
    the pairs taken a tile of first rows at a time, by second row: at 100,000 rows, where `x`
    does not fit in the cache, that halves the time of taking them in (i, j) order.
    """
    from hashsearch._duplicate_kernels import pair_dots as kernel

    x = np.ascontiguousarray(x, np.float32)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    out = np.empty(len(i), np.float32)
    if not len(i):
        return out
    order = np.argsort((i // _TILE) * len(x) + j, kind="stable")
    ii, jj = i[order], j[order]
    threads = n_threads or _cores()
    threads = max(1, min(threads, len(i) // (1 << 14)))
    bounds = np.linspace(0, len(i), threads + 1).astype(np.int64)
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    sorted_out = np.empty(len(i), np.float32)
    if threads == 1:
        kernel(x, ii, jj, sorted_out)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:  # the kernel releases the GIL
            list(pool.map(lambda s: kernel(x, ii[s], jj[s], sorted_out[s]), slices))
    out[order] = sorted_out
    return out


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cosine_of_pairs(features: np.ndarray, i: np.ndarray, j: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """Cosine similarity (float32, (n_pairs,)) between rows i and j of `features` (n, d)."""
    return pair_dots(unit_rows(features), i, j, n_threads)


def group_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n rows joined by the pairs (i, j): a group number per row (int64, (n,)).

    Rows in no pair get a group of their own. Numbered by each group's first row.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first row so the numbering does not depend on scipy's traversal.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def duplicate_groups(
    codes: Codes,
    radius: int,
    *,
    digests: list[str] | None = None,
    features: np.ndarray | None = None,
    min_similarity: float | None = None,
    n_threads: int | None = None,
    search: str = "auto",
    stats: dict | None = None,
) -> list[np.ndarray]:
    """Groups of rows (each an int64 array, sorted, of at least 2 rows) that are duplicates.

    Two rows pass when their codes are within `radius` (and, with `min_similarity`, the
    cosine similarity of their `whiten`-ed `features` is at least that), or when they have the
    same non-empty digest. Every two rows of a group pass (complete linkage: see `link_groups`).
    Groups come sorted by their first row. `search` as in `near_pairs`.
    A `stats` dict given receives the seconds of each stage ("whiten", "search", "confirm",
    "group"), the "pairs within radius", the "pairs kept" and the "search method" that ran.

    Raises
    ------
    ValueError
        A radius outside [0, n_bits], a similarity outside [-1, 1], `min_similarity` without
        `features`, digests/features of another length than `codes`, or an unknown `search`.
    """
    n = len(codes)
    min_similarity = check_real("min_similarity", min_similarity, low=-1.0, high=1.0, allow_none=True)
    if min_similarity is not None and features is None:
        raise ValueError("min_similarity needs features: this collection stores none (built with --no-features)")
    for name, value in (("digests", digests), ("features", features)):
        if value is not None and len(value) != n:
            raise ValueError(f"{name} has {len(value)} rows, codes {n}: give one per code")
    radius = check_int("radius", radius, low=0, high=codes.n_bits, note=f"n_bits={codes.n_bits}")
    check_choice("search", search, SEARCHES)
    stats = {} if stats is None else stats
    t = time.perf_counter()
    white = _to_unit(whiten(features)) if features is not None and min_similarity is not None else None
    stats["whiten"] = time.perf_counter() - t
    return _groups(codes, radius, digests, white, min_similarity, n_threads, stats, search)


def _groups(codes, radius, digests, white, min_similarity, n_threads, stats=None, search="auto") -> list[np.ndarray]:
    """`duplicate_groups` on unit-length whitened features (`white`); adds the seconds of the
    search, the check and the grouping, and the pairs found and kept, to `stats` (a dict)."""
    n = len(codes)
    stats = {} if stats is None else stats
    t_search = t_check = 0.0
    found = 0
    parts_i, parts_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    # How alike each kept pair is, for the order of linkage: the similarity, else minus the distance.
    parts_s = [np.zeros(0, np.float32)]
    t = time.perf_counter()
    chunks = _near_pair_chunks(codes, radius, n_threads, search, stats)
    t_search += time.perf_counter() - t
    while True:
        t = time.perf_counter()
        i, j, d = next(chunks, (None, None, None))
        t_search += time.perf_counter() - t
        if i is None:
            break
        found += len(i)
        sim = -d.astype(np.float32)
        # Checked chunk by chunk: the pairs within the radius (a few per cent of all pairs at the
        # default radius) are never all held at once, only the few that pass.
        if min_similarity is not None and len(i):
            t = time.perf_counter()
            dots = pair_dots(white, i, j, n_threads)
            keep = dots >= min_similarity
            i, j, sim = i[keep], j[keep], dots[keep]
            t_check += time.perf_counter() - t
        parts_i.append(i)
        parts_j.append(j)
        parts_s.append(sim)
    t = time.perf_counter()
    i, j, sim = np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s)
    stats.update({"search": t_search, "confirm": t_check, "pairs within radius": found, "pairs kept": len(i)})
    digest_arr = None
    if digests is not None:
        di, dj = _same_digest_pairs(digests)
        i, j = np.concatenate([i, di]), np.concatenate([j, dj])
        sim = np.concatenate([sim, np.full(len(di), np.inf, np.float32)])  # the same bytes: joined first
        digest_arr = np.asarray(digests, dtype=object)
    groups = link_groups(
        n, i, j, sim, codes, radius, white if min_similarity is not None else None, min_similarity, digest_arr, stats
    )
    stats["group"] = time.perf_counter() - t
    return groups


def link_groups(
    n, i, j, alike, codes, radius, white=None, min_similarity=None, digests=None, stats=None
) -> list[np.ndarray]:
    """Groups (sorted int64 row arrays of at least 2 rows, sorted by first row) of n rows joined
    by the pairs (i, j) by complete linkage: every two rows of a group pass `_passes`.

    The pairs are the ones that pass; `alike` (float, (n_pairs,)) orders them, most alike first
    (ties by (i, j)). A connected component of the pairs whose rows all pass two by two is a group
    as it is (most are: pairs and small groups); any other is built again pair by pair in that
    order, two groups being joined only when every pair across them passes. `stats` receives
    "chains split": the components that were not groups as they were.
    """
    labels = group_labels(n, i, j)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups, split = [], []
    for g in np.split(order, bounds):
        if len(g) == 2 or (
            len(g) > 2 and len(g) <= 4096 and _passes(g, g, codes, radius, white, min_similarity, digests).all()
        ):
            groups.append(g)
        elif len(g) > 2:
            split.append(labels[g[0]])
    if stats is not None:
        stats["chains split"] = len(split)
    if split:
        in_split = np.isin(labels[i], np.asarray(split))
        si, sj, sa = i[in_split], j[in_split], np.asarray(alike)[in_split]
        parent: dict[int, int] = {}
        members: dict[int, list[int]] = {}

        def root(r: int) -> int:
            while parent.get(r, r) != r:
                r = parent[r]
            return r

        for k in np.lexsort((sj, si, -sa)).tolist():
            a, b = root(int(si[k])), root(int(sj[k]))
            if a == b:
                continue
            ma, mb = members.get(a, [a]), members.get(b, [b])
            if _passes(np.asarray(ma), np.asarray(mb), codes, radius, white, min_similarity, digests).all():
                if len(ma) < len(mb):
                    a, b, ma, mb = b, a, mb, ma
                parent[b] = a
                members[a] = ma + mb
                members.pop(b, None)
        groups += [np.sort(np.asarray(m, np.int64)) for m in members.values() if len(m) > 1]
    groups.sort(key=lambda g: int(g[0]))
    return groups


def _passes(a, b, codes, radius, white=None, min_similarity=None, digests=None) -> np.ndarray:
    """(len(a), len(b)) bool: rows a[k] and b[l] pass the duplicate test: codes within `radius`
    (and whitened similarity at least `min_similarity` where `white` is given), or the same
    non-empty digest."""
    from hashsearch.codes import hamming_distances

    ok = hamming_distances(codes[a], codes[b]) <= radius
    if white is not None and min_similarity is not None:
        ok &= white[a] @ white[b].T >= np.float32(min_similarity)
    if digests is not None:
        da, db = digests[a], digests[b]
        ok |= (da[:, None] == db[None, :]) & (da != "")[:, None]
    return ok


def _same_digest_pairs(digests: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first row with a digest, each later row with it)."""
    first: dict[str, int] = {}
    pi, pj = [], []
    for row, d in enumerate(digests):
        if not d:
            continue
        if d in first:
            pi.append(first[d])
            pj.append(row)
        else:
            first[d] = row
    return np.asarray(pi, np.int64), np.asarray(pj, np.int64)


# -- groups of a collection -------------------------------------------------------------------


@dataclass
class Member:
    """One image of a duplicate group.

    Attributes
    ----------
    id, key, label, path, digest
        The collection's record (`Collection.entries`); `path` is where the file is on this machine.
    distance : int
        Hamming distance between this image's code and the kept image's (0 for the kept image).
    similarity : float or None
        Cosine similarity of the whitened stored features to the kept image's (None: no stored
        features; about 0 for unrelated photos, 1 for the same pixels).
    exact : bool
        The same content digest as the kept image (False for the kept image itself).
    bytes, width, height : int or None
        File size in bytes and image size in pixels (None: the file cannot be read).
    mtime : float or None
        Modification time (seconds since the epoch; None for an archive member or an unreadable file).
    keep : bool
        The image the group's rule keeps.
    """

    id: int
    key: str
    label: str | None
    path: str
    digest: str
    distance: int = 0
    similarity: float | None = None
    exact: bool = False
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    mtime: float | None = None
    keep: bool = False


@dataclass
class Group:
    """A group of duplicates: `members`, the kept image first, then by (distance, id)."""

    members: list[Member]

    @property
    def keep(self) -> Member:
        """The member to keep."""
        return self.members[0]

    @property
    def others(self) -> list[Member]:
        """The members not kept: what a move or delete acts on."""
        return self.members[1:]


@dataclass
class DuplicateReport:
    """What `find_duplicates` found: groups (largest first, then by smallest id), its parameters
    and what each stage cost."""

    groups: list[Group]
    radius: int
    min_similarity: float | None
    keep: str
    n_bits: int
    n_images: int
    #: Seconds per stage: read (codes and entries), whiten (the stored features, unless given),
    #: search (the radius search), confirm (the feature check of its pairs), group, files (each
    #: member's file size, pixels and time, and the rule).
    timings: dict[str, float] = field(default_factory=dict)
    #: Pairs found within the radius, and those kept by the feature check (all of them without it).
    pairs: dict[str, int] = field(default_factory=dict)
    #: The radius search that ran: "mih" or "flat" (see `near_pairs`; "" for an empty collection).
    search: str = ""

    @property
    def n_duplicates(self) -> int:
        """Images that are not the one kept, over all groups."""
        return sum(len(g.members) - 1 for g in self.groups)

    def narrow_below(self, margin: float = NARROW_MARGIN) -> float | None:
        """The similarity under which a member passes only narrowly: `min_similarity` + `margin`,
        rounded to 4 decimals as each member's similarity is, so that a member printed with 4
        decimals is below it exactly when `narrow_groups` counts it (None without the feature check)."""
        return None if self.min_similarity is None else round(self.min_similarity + margin, 4)

    def narrow_groups(self, margin: float = NARROW_MARGIN) -> list[int]:
        """Positions in `groups` of the groups that pass only narrowly: a member not kept whose
        similarity to the kept image is below `narrow_below(margin)` (none without the feature
        check). Most groups of different photos in the small-folder benchmark are such groups
        (benchmarks/results/duplicates-small.md)."""
        below = self.narrow_below(margin)
        if below is None:
            return []
        return [
            k
            for k, g in enumerate(self.groups)
            if any(m.similarity is not None and m.similarity < below for m in g.others)
        ]

    def summary(self) -> dict:
        """The parameters and counts, as the CLI's ``--json`` and ``GET /duplicates`` give them."""
        return {
            "radius": self.radius,
            "min_similarity": self.min_similarity,
            "keep": self.keep,
            "n_bits": self.n_bits,
            "n_images": self.n_images,
            "n_groups": len(self.groups),
            "n_duplicates": self.n_duplicates,
        }


def file_info(path: str) -> dict:
    """Size in bytes, width and height in pixels, and modification time of an image file or archive member.

    Returns a dict with "bytes", "width", "height", "mtime"; a value that cannot be read is None
    (an archive member has no mtime of its own here).
    """
    from PIL import Image

    from hashsearch.data.sources import read_key, split_key

    info: dict = {"bytes": None, "width": None, "height": None, "mtime": None}
    file, member = split_key(path)
    try:
        if member is None:
            st = os.stat(file)
            info["bytes"], info["mtime"] = st.st_size, st.st_mtime
            opened = Image.open(file)
        else:
            data = read_key(path)
            info["bytes"] = len(data)
            opened = Image.open(io.BytesIO(data))
        with opened as im:  # the header only: the pixels are not decoded
            info["width"], info["height"] = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    return info


def choose_keep(members: list[Member], rule: str, alike: np.ndarray | None = None) -> Member:
    """The member a rule keeps; ties go to the smallest id.

    largest: most pixels (width x height); among those, the member most alike to the others of its
    group (the highest mean of its row of `alike`, rounded to 4 decimals: the photo its copies most
    likely derive from, as each copy departs from it in its own way); then the oldest file
    (modification time: copies are usually made after their originals); then most bytes. oldest /
    newest: modification time; shortest-path: the shortest path, then the first by name. A member
    whose size or time is unknown comes last.

    Bytes say little about which copy is the original: a copy re-encoded at a higher JPEG quality,
    or with text drawn on it, has more bytes than its original. Ranking the equally large by bytes
    kept the original in 86 of 488 groups of planted copies; by how alike they are to the rest of
    the group first, in 211, the files' times ignored (small folders of 30-800 flowers12 photos, seeds 0 and 1; 82 and 186
    of 483 on seeds 100 and 101, where the rules were compared: the table "which image is kept" of
    benchmarks/results/duplicates-small.md, printed by benchmarks/duplicates.py --small). A member
    drawn at random is the original about as often (213 and 195): pixels come first, and a copy
    with more pixels is kept over its original. In a group of two the mean is the same for both,
    and the older file is kept, then the one with more bytes: a fresh user's mirror re-encoded at
    quality 92 (21,501 bytes over the original's 14,164) and a PNG copy, both newer than their
    originals, were kept while bytes came right after the mean.

    Parameters
    ----------
    members : list of Member
    rule : str
        One of `KEEP_RULES`.
    alike : np.ndarray, optional
        (len(members), len(members)): how alike each two members are, larger more alike (whitened
        similarities, or minus Hamming distances); None skips that step of `largest`.
    """
    check_choice("keep", rule, KEEP_RULES)
    big = float("inf")
    central = [0.0] * len(members)
    if rule == "largest" and alike is not None and len(members) > 1:
        a = np.asarray(alike, np.float64)
        central = [round(float((a[k].sum() - a[k, k]) / (len(members) - 1)), 4) for k in range(len(members))]
    rank = {id(m): k for k, m in enumerate(members)}

    def sort_key(m: Member):
        if rule == "largest":
            pixels = (m.width or 0) * (m.height or 0)
            older = m.mtime if m.mtime is not None else big
            return (-pixels, -central[rank[id(m)]], older, -(m.bytes or 0), m.id)
        if rule == "oldest":
            return (m.mtime if m.mtime is not None else big, m.id)
        if rule == "newest":
            return (-m.mtime if m.mtime is not None else big, m.id)
        return (len(m.path), m.path, m.id)

    return min(members, key=sort_key)


def find_duplicates(
    coll,
    radius: int | None = None,
    *,
    min_similarity: float | str | None = "auto",
    keep: str = "largest",
    n_threads: int | None = None,
    whitened: Whitened | None = None,
    search: str = "auto",
) -> DuplicateReport:
    """Groups of exact and near-duplicate images in a collection, each with the image to keep.

    Parameters
    ----------
    coll : Collection
    radius : int, optional
        Hamming radius of a near-duplicate pair, 0 to the code length (default `default_radius`: a
        quarter of the bits with the feature check, a 32nd with codes only).
    min_similarity : float, "auto" or None
        Also require this cosine similarity of the whitened stored features (-1 to 1). "auto"
        (default): `default_min_similarity` of the collection's number of images where it stores
        features (0.4 from 4,000 images on, up to 0.5 in smaller ones), else codes only.
        None: codes only.
    keep : str
        One of `KEEP_RULES`: which member of a group is kept (see `choose_keep`).
    whitened : Whitened, optional
        `whiten_collection(coll)` computed earlier, to skip computing it again (the groups are the
        same). One whose ids are not the collection's (it changed since) is ignored and computed
        again.
    search : str
        How the radius search runs, one of `SEARCHES` (see `near_pairs`; the groups are the same).

    Returns
    -------
    DuplicateReport
        Groups sorted by size (largest first), then by their smallest id; members with the kept
        one first, then by (distance to it, id).

    Raises
    ------
    ValueError
        A radius, similarity, rule or search out of range; `min_similarity` on a collection
        without stored features.
    """
    check_choice("keep", keep, KEEP_RULES)
    check_choice("search", search, SEARCHES)
    n_bits = coll.n_bits
    t0 = time.perf_counter()
    ids = np.sort(np.asarray(coll.index.ids, np.int64))
    if isinstance(min_similarity, str) and min_similarity == "auto":
        min_similarity = default_min_similarity(len(ids)) if coll.store_features else None
    min_similarity = check_real(
        "min_similarity", min_similarity, low=-1.0, high=1.0, allow_none=True, none_means="codes only"
    )
    radius = default_radius(n_bits, codes_only=min_similarity is None) if radius is None else radius
    radius = check_int("radius", radius, low=0, high=n_bits, note=f"the collection's codes have {n_bits} bits")
    codes = coll.index.get_codes(ids)
    entries = coll.entries(ids.tolist())
    digests = [(e or {}).get("digest", "") for e in entries]
    white = None
    t1 = time.perf_counter()
    if coll.store_features and len(ids):
        if whitened is None or not np.array_equal(whitened.ids, ids):
            whitened = whiten_collection(coll)
        white = whitened.features
    elif min_similarity is not None:
        raise ValueError(
            "min_similarity needs stored features: this collection was built with --no-features; "
            "leave out the similarity test (codes only), or index again without --no-features"
        )
    t2 = time.perf_counter()
    stats: dict = {}
    groups_rows = _groups(codes, radius, digests, white, min_similarity, n_threads, stats, search)
    t3 = time.perf_counter()
    groups = []
    for rows in groups_rows:
        members = []
        for r in rows.tolist():
            e = entries[r]
            members.append(
                Member(
                    id=int(ids[r]),
                    key=e["key"],
                    label=e["label"],
                    path=e["path"],
                    digest=e["digest"],
                    **file_info(e["path"]),
                )
            )
        alike = None
        if keep == "largest":  # how alike the members are, for its step after pixels
            alike = white[rows] @ white[rows].T if white is not None else -_hamming_within(codes, rows)
        kept = choose_keep(members, keep, alike)
        kept_row = int(rows[[m.id for m in members].index(kept.id)])
        dist = _hamming_to(codes, kept_row, rows)
        # Unit rows: the cosines to the kept image are one small product (no pass over every row).
        sims = None if white is None else white[rows] @ white[kept_row]
        for k, m in enumerate(members):
            m.distance = int(dist[k])
            m.similarity = None if sims is None else round(float(sims[k]), 4)
            m.exact = m is not kept and bool(m.digest) and m.digest == kept.digest
            m.keep = m is kept
        members.sort(key=lambda m: (not m.keep, m.distance, m.id))
        groups.append(Group(members))
    groups.sort(key=lambda g: (-len(g.members), min(m.id for m in g.members)))
    t4 = time.perf_counter()
    seconds = {"read": t1 - t0, "whiten": t2 - t1, "search": stats["search"], "confirm": stats["confirm"]}
    seconds.update({"group": stats["group"], "files": t4 - t3})
    return DuplicateReport(
        groups,
        radius,
        min_similarity,
        keep,
        n_bits,
        len(ids),
        {k: round(v, 4) for k, v in seconds.items()},
        {k: stats[k] for k in ("pairs within radius", "pairs kept")},
        stats.get("search method", ""),
    )


def _hamming_within(codes: Codes, rows: np.ndarray) -> np.ndarray:
    from hashsearch.codes import hamming_distances

    return hamming_distances(codes[rows], codes[rows]).astype(np.float64)


def _hamming_to(codes: Codes, row: int, rows: np.ndarray) -> np.ndarray:
    from hashsearch.codes import hamming_distances

    return hamming_distances(codes[row : row + 1], codes[rows])[0]
