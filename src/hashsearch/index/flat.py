"""Exact linear-scan index: every query is compared with every stored code.

The reference back end: simple, exact (ties broken by id), and fast enough for a few hundred
thousand codes. On disk it is three plain files, so a saved index can be memory-mapped::

    index.json   {"format": ..., "version": 1, "backend": "flat", "n_bits": ..., "count": ..., "next_id": ...}
    codes.u8     .npy file, uint8 (count, ceil(n_bits / 8)), packed codes in storage order
    ids.i64      .npy file, int64 (count,), the id of each row
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hashsearch.codes import word_view
from hashsearch.index._scan import (
    _increasing,
    default_threads,
    id_order,
    keys_to_range,
    keys_to_search,
    knn_keys,
    query_words,
    range_keys,
)
from hashsearch.index.base import Index, read_index_meta, register_index
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult
from hashsearch.validation import check_int

FORMAT = "hashsearch-flat-index"
FORMAT_VERSION = 1

_MIN_CAPACITY = 64


def _as_id_array(ids, what: str = "ids") -> np.ndarray:
    """`ids` as a 1-d int64 array, refusing floats and other non-integer input."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array of integers, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}; convert them with .astype(np.int64)")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit in int64, got a value of {int(arr.max())}")
    return arr.astype(np.int64, copy=False)


def _few(values, limit: int = 10) -> str:
    """A short listing of values for an error message."""
    values = list(values)
    head = ", ".join(str(int(v)) for v in values[:limit])
    return head + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@register_index("flat")
class FlatIndex(Index):
    """Exact Hamming search by linear scan over packed codes.

    Entries live in two arrays in storage order (insertion order; `remove` closes the gaps
    and keeps the order of the rest), grown geometrically so many small `add` calls stay
    cheap. A loaded index memory-maps its files and copies them on the first `add`/`remove`.

    Examples
    --------
    >>> import numpy as np
    >>> from hashsearch.codes import pack_bits
    >>> index = FlatIndex(n_bits=8)
    >>> index.add(pack_bits(np.eye(8, dtype=np.uint8)[:3])).tolist()
    [0, 1, 2]
    >>> index.search(pack_bits(np.eye(8, dtype=np.uint8)[1:2]), k=2).ids.tolist()
    [[1, 0]]
    """

    exact = True

    def __init__(self, n_bits: int, n_threads: int | None = None) -> None:
        super().__init__(n_bits)
        self._n_bytes = (self.n_bits + 7) // 8
        self._codes = np.zeros((0, self._n_bytes), np.uint8)
        self._ids = np.zeros(0, np.int64)
        self._count = 0
        self._next_id = 0
        self._state: tuple | None = None  # (words, id ranks, sorted ids, ascending), see _scan_state
        self._order: np.ndarray | None = None  # row of each id in ascending id order, when not ascending
        self._n_threads = check_int("n_threads", n_threads, low=1, allow_none=True, none_means="every core")

    def __repr__(self) -> str:
        return f"FlatIndex(n_bits={self.n_bits}, count={self._count})"

    # -- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def ids(self) -> np.ndarray:
        """Ids of the entries, in storage order (a copy)."""
        return np.array(self._ids[: self._count], dtype=np.int64)

    def _check_ids(self) -> None:
        """The deferred check of a loaded index's ids (see `load`): ValueError if damaged."""
        directory = getattr(self, "_unchecked", None)
        if directory is None:
            return
        ids, count = self._ids[: self._count], self._count
        # Strictly increasing ids (the usual case) are checked in one pass; others need a sort.
        if count and (ids[0] < 0 or not _increasing(ids)) and (ids.min() < 0 or len(np.unique(ids)) != count):
            raise ValueError(f"{directory}/ids.i64 holds negative or repeated ids; the index is damaged")
        max_id = int(ids.max()) + 1 if count else 0
        if self._next_id < max_id:
            raise ValueError(f"{directory}/index.json has next_id={self._next_id!r}, below the largest stored id")
        self._unchecked = None

    def _find_rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (int64, -1 where absent), by binary search in ascending id order: no
        per-entry dictionary (10^8 entries would take over 10 GB as a Python dict)."""
        n = self._count
        if n == 0 or len(ids) == 0:
            return np.full(len(ids), -1, np.int64)
        _, rank, sorted_ids, ascending = self._scan_state()
        pos = np.minimum(np.searchsorted(sorted_ids, ids), n - 1)
        found = sorted_ids[pos] == ids
        if not ascending:
            if self._order is None:
                self._order = np.empty(n, np.int64)
                self._order[rank] = np.arange(n)
            pos = self._order[pos]
        return np.where(found, pos, -1)

    def get_codes(self, ids: np.ndarray) -> Codes:
        """Codes of the given ids, in the order given (KeyError naming any unknown id)."""
        ids = _as_id_array(ids)
        rows = self._find_rows(ids)
        if (rows < 0).any():
            raise KeyError(f"ids not in the index: {_few(ids[rows < 0])}")
        return Codes(np.array(self._codes[rows], dtype=np.uint8).reshape(-1, self._n_bytes), self.n_bits)

    # -- mutation -----------------------------------------------------------------------
    def _reserve(self, needed: int) -> None:
        """Make room for `needed` rows in owned, writable arrays (geometric growth)."""
        capacity = self._codes.shape[0]
        writable = self._codes.flags.writeable and self._ids.flags.writeable
        if needed <= capacity and writable:
            return
        if needed > capacity:
            capacity = max(needed, capacity + capacity // 2, _MIN_CAPACITY)
        codes = np.zeros((capacity, self._n_bytes), np.uint8)
        ids = np.zeros(capacity, np.int64)
        codes[: self._count] = self._codes[: self._count]
        ids[: self._count] = self._ids[: self._count]
        self._codes, self._ids = codes, ids

    def add(self, codes: Codes, ids: np.ndarray | None = None) -> np.ndarray:
        """Add entries; returns their ids (assigned after the largest id ever used when `ids` is None).

        Raises ValueError for negative ids, ids repeated in `ids`, or ids already in the index;
        the index is unchanged when it raises.
        """
        self._check_codes(codes)
        self._check_ids()
        m = len(codes)
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + m, dtype=np.int64)
        else:
            new_ids = _as_id_array(ids)
            if len(new_ids) != m:
                raise ValueError(f"got {m} codes but {len(new_ids)} ids; pass one id per code")
            if m and new_ids.min() < 0:
                raise ValueError(f"ids must be non-negative, got {_few(new_ids[new_ids < 0])}")
            uniq, counts = np.unique(new_ids, return_counts=True)
            if len(uniq) != m:
                raise ValueError(f"ids repeated within this add: {_few(uniq[counts > 1])}; ids must be unique")
            # Ids at or beyond next_id cannot be present, so the common case needs no lookup.
            if m and new_ids.min() < self._next_id:
                present = new_ids[self._find_rows(new_ids) >= 0]
                if len(present):
                    raise ValueError(f"ids already in the index: {_few(present)}; remove them first or pass new ids")
        if m == 0:
            return new_ids.copy()
        start = self._count
        self._reserve(start + m)
        self._codes[start : start + m] = codes.data
        self._ids[start : start + m] = new_ids
        self._count += m
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        self._state = self._order = None
        return new_ids.copy()

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id (unknown ids are ignored); returns how many were removed.

        The remaining entries keep their storage order. Removed ids are not reused by `add`.
        """
        ids = _as_id_array(ids)
        self._check_ids()
        n = self._count
        if n == 0 or len(ids) == 0:
            return 0
        gone = np.isin(self._ids[:n], ids)
        removed = int(gone.sum())
        if removed == 0:
            return 0
        keep = ~gone
        self._reserve(n)  # copies a memory-mapped index before the first write
        kept = n - removed
        self._codes[:kept] = self._codes[:n][keep]
        self._ids[:kept] = self._ids[:n][keep]
        self._count = kept
        self._state = self._order = None
        return removed

    # -- search -------------------------------------------------------------------------
    def _scan_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(words, rank, sorted_ids, ascending) of the stored entries (see `id_order`), cached
        until the next add/remove."""
        if self._state is None:
            self._check_ids()
            n = self._count
            self._state = (word_view(self._codes[:n]), *id_order(self._ids[:n]))
        return self._state

    @property
    def n_threads(self) -> int:
        """Threads a search uses (the constructor's `n_threads`, or every core)."""
        return self._n_threads or default_threads()

    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest entries of each query, sorted by (Hamming distance, id).

        Returns int32 distances and int64 ids of shape (n_queries, k); slots beyond the number
        of entries hold id -1 and distance -1.
        """
        self._check_codes(queries, "queries")
        k = self._check_k(k)
        n = self._count
        if n == 0 or len(queries) == 0:
            return SearchResult(
                np.full((len(queries), k), -1, np.int32), np.full((len(queries), k), MISSING_ID, np.int64)
            )
        words, rank, sorted_ids, ascending = self._scan_state()
        qw = query_words(queries, words)
        keys = knn_keys(qw, words, rank, ascending, 0, n, n, min(k, n), self.n_bits, self.n_threads)
        if k > n:
            keys = np.concatenate([keys, np.full((len(keys), k - n), np.iinfo(np.int64).max)], axis=1)
        return keys_to_search(keys, n, sorted_ids)

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """Every entry within Hamming distance `radius` (inclusive), sorted by (distance, id)."""
        self._check_codes(queries, "queries")
        radius = check_int("radius", radius, low=0)
        n = self._count
        if n == 0 or len(queries) == 0:
            return RangeResult(np.zeros(len(queries) + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
        words, rank, sorted_ids, _ = self._scan_state()
        counts, keys = range_keys(query_words(queries, words), words, rank, 0, n, n, radius, self.n_threads)
        return keys_to_range(counts, keys, n, sorted_ids)

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write `index.json`, `codes.u8` and `ids.i64` into the existing `directory`.

        Each file is written beside its final name and then renamed over it, so saving into the
        folder this index was memory-mapped from is safe.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"directory {str(directory)!r} does not exist; create it before saving")
        n = self._count
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backend": self.name,
            "n_bits": self.n_bits,
            "count": n,
            "next_id": self._next_id,
            **self._extra_meta(),
        }
        arrays = {"codes.u8": self._codes[:n], "ids.i64": self._ids[:n], **self._extra_arrays()}
        for fname, arr in arrays.items():
            if isinstance(arr, Path):  # a file already written (e.g. tables built in place): move it
                os.replace(arr, directory / fname)
                continue
            tmp = directory / f".{fname}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:  # a file object, so np.save keeps the name as given
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, directory / fname)
        tmp = directory / f".index.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, directory / "index.json")

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> FlatIndex:
        """Read an index written by `save`; with `mmap` the codes stay on disk until written to.

        Raises ValueError when the files are missing, of another format, or disagree with
        `index.json` (a damaged index is an error, never a wrong answer).
        """
        directory = Path(directory)
        meta = read_index_meta(directory, cls.name, FORMAT, FORMAT_VERSION)
        n_bits, count = meta.get("n_bits"), meta.get("count")
        if not (isinstance(n_bits, int) and n_bits >= 1 and isinstance(count, int) and count >= 0):
            raise ValueError(
                f"{directory}/index.json needs a positive integer 'n_bits' and a non-negative "
                f"integer 'count', got n_bits={n_bits!r}, count={count!r}"
            )
        mode = "r" if mmap else None
        arrays = {}
        for fname in ("codes.u8", "ids.i64"):
            try:
                arrays[fname] = np.load(directory / fname, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"{directory}/{fname} is missing or not a .npy file: {e}") from e
        codes, ids = arrays["codes.u8"], arrays["ids.i64"]
        n_bytes = (n_bits + 7) // 8
        if codes.dtype != np.uint8 or codes.shape != (count, n_bytes):
            raise ValueError(
                f"{directory}/codes.u8 holds {codes.dtype} {codes.shape} but index.json says "
                f"uint8 ({count}, {n_bytes}) for {count} codes of {n_bits} bits; the index is damaged"
            )
        if ids.dtype != np.int64 or ids.shape != (count,):
            raise ValueError(
                f"{directory}/ids.i64 holds {ids.dtype} {ids.shape} but index.json says "
                f"int64 ({count},); the index is damaged"
            )
        next_id = meta["next_id"] if "next_id" in meta else (int(ids.max()) + 1 if count else 0)
        if not isinstance(next_id, int) or next_id < 0:
            raise ValueError(f"{directory}/index.json has next_id={next_id!r}, not a non-negative integer")
        self = cls(n_bits)
        self._codes, self._ids, self._count, self._next_id = codes, ids, count, next_id
        # Every id is read (checked unique, non-negative, below next_id) by the first search,
        # add, remove or lookup, not here: opening 10^8 entries then reads only the headers.
        self._unchecked = directory
        self._load_extra(directory, meta, mode)
        return self

    # Hooks for back ends that store more beside the codes (see MIHIndex).
    def _extra_meta(self) -> dict:
        return {}

    def _extra_arrays(self) -> dict[str, np.ndarray | Path]:
        """Arrays to save beside the codes, or paths of files already written to move in place."""
        return {}

    def _load_extra(self, directory: Path, meta: dict, mmap_mode: str | None) -> None:
        pass
