"""Several immutable indexes of one back end searched as one, with removals as tombstones.

A collection saved at 10^8 entries must not rewrite its index to add or remove 10,000 of them
(see `hashsearch.collection`): its index is kept as *segments*, each a saved index of the same
back end that nothing writes into, plus an in-memory *tail* that takes new entries, plus a
sorted set of *tombstones*, the ids removed from the segments. A save writes the tail as a new
segment and the tombstones added since, and hard-links the unchanged segments. Searches are
exact: each live segment is searched and the answers merged by (distance, id), tombstoned ids
left out (a segment is asked for more neighbours when tombstones take some of its first k).

With one segment and no tombstone a search is the back end's own search (the same speed);
`merged` builds one index of every live entry (compaction).
"""

from __future__ import annotations

import numpy as np

from hashsearch.index.base import Index
from hashsearch.index.flat import FlatIndex
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult

_KEY_MAX = np.iinfo(np.int64).max
#: Segments of fewer entries are kept "flat" whatever the base's back end: a linear scan of them
#: takes microseconds, while mih's tables of 64-bit codes take 2 MB whatever the count.
SMALL_SEGMENT = 1 << 16


def contains(index: Index, ids: np.ndarray) -> np.ndarray:
    """Bool mask (len(ids),): which of `ids` (int64) are entries of `index`, without copying its
    ids where the back end can look them up (flat, mih, segments)."""
    ids = np.asarray(ids, np.int64)
    if isinstance(index, SegmentedIndex):
        return index.contains(ids)
    find = getattr(index, "_find_rows", None)
    if find is not None:
        return find(ids) >= 0
    return np.isin(ids, index.ids)


def empty_like(index: Index) -> Index:
    """An empty index of the back end and parameters of `index` (mih: the same substrings)."""
    params = {"n_substrings": index.n_substrings} if hasattr(index, "n_substrings") else {}
    return type(index)(index.n_bits, **params)


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0 or len(values) == 0:
        return np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


class SegmentedIndex(Index):
    """Segments of one back end + a tail for additions + tombstones, searched as one exact index.

    Parameters
    ----------
    segments : list of Index
        Saved exact indexes of one code length, disjoint ids, never modified here: the first
        (the base) of the collection's back end (flat or mih), the others of it or, when small
        (under `SMALL_SEGMENT` entries), flat.
    removed : int64 array, optional
        Tombstones: ids of the segments that are removed (ids not in a segment are ignored).

    `add` goes to the tail (an empty index of the same back end); `remove` removes from the tail,
    or adds tombstones. `seal` makes the tail a segment (after a save wrote it). `name` is the
    back end's, so `info` and users see "flat" or "mih".
    """

    def __init__(self, segments: list[Index], removed: np.ndarray | None = None) -> None:
        if not segments:
            raise ValueError("a segmented index needs at least one segment")
        base = segments[0]
        super().__init__(base.n_bits)
        if any(s.n_bits != base.n_bits for s in segments):
            raise ValueError("the segments of an index must all hold codes of one length")
        self.name = base.name  # type: ignore[misc]
        self.exact = all(s.exact for s in segments)  # type: ignore[misc]
        self.segments = list(segments)
        self.tail: Index = FlatIndex(base.n_bits)
        removed = np.unique(np.asarray([] if removed is None else removed, np.int64))
        self._removed = np.zeros(0, np.int64)
        self._dead: list[int] = []
        self._pending = np.zeros(0, np.int64)
        self._next_id = max(self._segment_next_id(s) for s in self.segments)
        self._set_removed(removed)

    def __repr__(self) -> str:
        return (
            f"SegmentedIndex({self.name}, segments={[len(s) for s in self.segments]}, "
            f"tail={len(self.tail)}, removed={len(self._removed)})"
        )

    @staticmethod
    def _segment_next_id(index: Index) -> int:
        nxt = getattr(index, "_next_id", None)
        if nxt is not None:
            return int(nxt)
        ids = index.ids
        return int(ids.max()) + 1 if len(ids) else 0

    def _set_removed(self, removed: np.ndarray) -> None:
        """Keep the tombstones that name an entry of a segment; count them per segment."""
        removed = np.unique(np.asarray(removed, np.int64))
        dead = [contains(s, removed) if len(removed) else np.zeros(0, bool) for s in self.segments]
        hit = np.zeros(len(removed), bool)
        for d in dead:
            hit |= d
        self._removed = removed[hit]
        self._dead = [int(d.sum()) for d in dead]

    # -- contents -----------------------------------------------------------------------
    @property
    def removed(self) -> np.ndarray:
        """The tombstones: sorted int64 ids removed from the segments (a copy)."""
        return self._removed.copy()

    def is_removed(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which `ids` are tombstones (a binary search each)."""
        return _in_sorted(np.asarray(ids, np.int64), self._removed)

    @property
    def pending_removed(self) -> np.ndarray:
        """Tombstones added since the last `seal` (sorted int64)."""
        return self._pending.copy()

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments) - len(self._removed) + len(self.tail)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the live entries: segment by segment in storage order, then the tail."""
        parts = []
        for s, dead in zip(self.segments, self._dead):
            ids = s.ids
            parts.append(ids[~_in_sorted(ids, self._removed)] if dead else ids)
        parts.append(self.tail.ids)
        return np.concatenate(parts)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which `ids` are live entries."""
        ids = np.asarray(ids, np.int64)
        found = contains(self.tail, ids)
        for s in self.segments:
            found |= contains(s, ids)
        return found & ~_in_sorted(ids, self._removed)

    def get_codes(self, ids: np.ndarray) -> Codes:
        """Codes of the given live ids, in the order given (KeyError naming an unknown one)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.zeros((len(ids), (self.n_bits + 7) // 8), np.uint8)
        left = ~_in_sorted(ids, self._removed)
        done = np.zeros(len(ids), bool)
        for s in [*self.segments, self.tail]:
            if not len(s):
                continue
            here = left & ~done & contains(s, ids)
            if here.any():
                out[here] = s.get_codes(ids[here]).data
                done |= here
        if not done.all():
            raise KeyError(f"ids not in the index: {ids[~done][:10].tolist()}")
        return Codes(out, self.n_bits)

    # -- mutation -----------------------------------------------------------------------
    def add(self, codes: Codes, ids: np.ndarray | None = None) -> np.ndarray:
        """Add entries to the tail; ids as `Index.add` (after the largest ever used when None).

        Raises ValueError for ids already in the index (or removed from a segment: ids are not
        reused), as the back end does for its own."""
        self._check_codes(codes)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + len(codes), dtype=np.int64)
        else:
            ids = np.asarray(ids, np.int64)
            taken = np.zeros(len(ids), bool)
            for s in self.segments:
                taken |= contains(s, ids)
            if taken.any():
                raise ValueError(f"ids already in the index: {ids[taken][:10].tolist()}; ids are not reused")
        new = self.tail.add(codes, ids)
        if len(new):
            self._next_id = max(self._next_id, int(new.max()) + 1)
        return new

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id (unknown ones ignored): from the tail, or as tombstones; returns how many."""
        ids = np.unique(np.asarray(ids, np.int64))
        n = self.tail.remove(ids) if len(self.tail) else 0
        fresh = ids[~_in_sorted(ids, self._removed)]
        hit = np.zeros(len(fresh), bool)
        for i, s in enumerate(self.segments):
            d = contains(s, fresh)
            self._dead[i] += int(d.sum())
            hit |= d
        if hit.any():
            self._removed = np.union1d(self._removed, fresh[hit])
            self._pending = np.union1d(self._pending, fresh[hit])
        return n + int(hit.sum())

    def seal(self) -> None:
        """The tail becomes a segment, even an empty one (a save has written it as one: a
        collection's segments stay one to one with its parts), and the pending tombstones are kept."""
        self.segments.append(self.tail)
        self._dead.append(0)
        self.tail = FlatIndex(self.n_bits)
        self._pending = np.zeros(0, np.int64)

    def merged(self, start: int = 0) -> Index:
        """One new in-memory index of the live entries of segments[start:] and the tail (compaction):
        of the base's back end, or flat when it holds fewer than `SMALL_SEGMENT` entries (not the base)."""
        live = sum(len(s) - d for s, d in zip(self.segments[start:], self._dead[start:])) + len(self.tail)
        out = FlatIndex(self.n_bits) if start > 0 and live < SMALL_SEGMENT else empty_like(self.segments[0])
        for s, dead in zip(self.segments[start:], self._dead[start:]):
            ids = s.ids
            keep = ~_in_sorted(ids, self._removed) if dead else np.ones(len(ids), bool)
            if not keep.any():
                continue
            stored = getattr(s, "_codes", None)  # flat and mih: rows in storage order, as `ids`
            codes = (
                Codes(np.asarray(stored[: len(s)])[keep], self.n_bits) if stored is not None else s.get_codes(ids[keep])
            )
            out.add(codes, ids[keep])
        if len(self.tail):
            ids = self.tail.ids
            out.add(self.tail.get_codes(ids), ids)
        if hasattr(out, "_next_id"):
            out._next_id = max(out._next_id, self._next_id)
        return out

    def compact(self, start: int = 0, merged: Index | None = None) -> None:
        """Replace segments[start:] and the tail by one segment, `merged` (default: `merged(start)`);
        the tombstones of those segments go."""
        merged = self.merged(start) if merged is None else merged
        self.segments = [*self.segments[:start], merged]
        self.tail = FlatIndex(self.n_bits)
        self._pending = np.zeros(0, np.int64)
        self._set_removed(self._removed)

    # -- search -------------------------------------------------------------------------
    def _live(self) -> list[tuple[Index, int]]:
        parts = [(s, d) for s, d in zip(self.segments, self._dead) if len(s) > d]
        if len(self.tail):
            parts.append((self.tail, 0))
        return parts

    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest live entries of each query, sorted by (Hamming distance, id), exactly as
        one index of them all would answer."""
        self._check_codes(queries, "queries")
        k = self._check_k(k)
        live = self._live()
        if len(live) == 1 and live[0][1] == 0:
            return live[0][0].search(queries, k)
        nq = len(queries)
        dist_parts, id_parts = [], []
        for seg, dead in live:
            d, i = self._segment_knn(seg, dead, queries, k)
            dist_parts.append(d)
            id_parts.append(i)
        if not live:
            return SearchResult(np.full((nq, k), -1, np.int32), np.full((nq, k), MISSING_ID, np.int64))
        dist = np.concatenate(dist_parts, axis=1)
        ids = np.concatenate(id_parts, axis=1)
        missing = ids < 0
        # Missing slots sort last; ties by id.
        id_key = np.where(missing, _KEY_MAX, ids)
        by_id = np.argsort(id_key, axis=1, kind="stable")
        dist_key = np.take_along_axis(np.where(missing, _KEY_MAX, dist.astype(np.int64)), by_id, 1)
        order = np.take_along_axis(by_id, np.argsort(dist_key, axis=1, kind="stable"), 1)[:, :k]
        ids = np.take_along_axis(ids, order, 1)
        dist = np.take_along_axis(dist, order, 1)
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.concatenate([ids, np.full((nq, pad), MISSING_ID, np.int64)], axis=1)
            dist = np.concatenate([dist, np.full((nq, pad), -1, dist.dtype)], axis=1)
        return SearchResult(dist.astype(np.int32), ids.astype(np.int64))

    def _segment_knn(self, seg: Index, dead: int, queries: Codes, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest live entries of one segment, (nq, k) distances and ids (-1 where fewer):
        asks for k plus some, and again with more for the queries whose first ones were tombstones."""
        nq, n = len(queries), len(seg)
        want = min(n, k + min(dead, max(k, 32)))
        dist = np.full((nq, k), -1, np.int32)
        ids = np.full((nq, k), MISSING_ID, np.int64)
        todo = np.arange(nq)
        while len(todo):
            res = seg.search(Codes(queries.data[todo], queries.n_bits), want)
            alive = (res.ids >= 0) & ~_in_sorted(res.ids.ravel(), self._removed).reshape(res.ids.shape)
            # Live hits keep their (distance, id) order: a stable sort on "not alive" moves them first.
            order = np.argsort(~alive, axis=1, kind="stable")[:, :k]
            got_ids = np.take_along_axis(np.where(alive, res.ids, MISSING_ID), order, 1)
            got_dist = np.take_along_axis(np.where(alive, res.distances, -1), order, 1)
            m = got_ids.shape[1]
            ids[todo, :m], dist[todo, :m] = got_ids, got_dist
            # Exact once k live hits are in, or the segment has no more to give.
            short = (alive.sum(axis=1) < k) & (want < n) & (want < k + dead)
            todo = todo[short]
            want = min(n, k + dead, want * 4)
        return dist, ids

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """Every live entry within Hamming distance `radius` (inclusive), sorted by (distance, id)."""
        self._check_codes(queries, "queries")
        live = self._live()
        if len(live) == 1 and live[0][1] == 0:
            return live[0][0].range_search(queries, radius)
        nq = len(queries)
        q_parts, d_parts, i_parts = [], [], []
        for seg, dead in live:
            r = seg.range_search(queries, radius)
            q = np.repeat(np.arange(nq), np.diff(r.lims))
            keep = ~_in_sorted(r.ids, self._removed) if dead else slice(None)
            q_parts.append(q[keep])
            d_parts.append(r.distances[keep])
            i_parts.append(r.ids[keep])
        if not live:
            return RangeResult(np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
        q, d, i = (np.concatenate(p) for p in (q_parts, d_parts, i_parts))
        order = np.lexsort((i, d, q))
        lims = np.zeros(nq + 1, np.int64)
        np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
        return RangeResult(lims, d[order].astype(np.int32), i[order].astype(np.int64))

    # -- persistence --------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write one index of every live entry (`merged`) in the back end's own files; a
        collection saves its segments one by one instead (see `hashsearch.collection`)."""
        self.merged().save(directory)
