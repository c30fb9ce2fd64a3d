"""Multi-index hashing: exact Hamming k-NN and radius search without scanning every code.

Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing" (CVPR 2012;
TPAMI 2014). Each code is cut into m disjoint substrings and every substring indexes the
entries in its own hash table. If two codes differ in r bits, then by the pigeonhole principle
some substring differs in at most floor(r / m) bits, so probing every table at small substring
radii finds every neighbour within r, and a k-NN search grows r until the k-th neighbour found
is provably within it (see `hashsearch.index._kernels.mih_knn`). Results are exactly those of
"flat", ties broken by id.

Tables are direct-addressed and stored like a CSR matrix per substring: `offsets[j, v]` to
`offsets[j, v + 1]` delimit, in `rows[j]`, the rows whose substring j has value v. They cover
the first `tabled` rows; rows added later form a tail that is scanned linearly until it grows
past an eighth of the table, when the tables are rebuilt (on the next search). `remove` compacts
the rows, so the tables are rebuilt on the next search.

On disk: the three files of "flat" (`index.json` carries an extra "mih" entry) plus

    mih_rows.i32     .npy int32 (m, tabled): row numbers bucketed by substring value
    mih_words.npy    .npy uint64 (uint32 for 32-bit codes) (m, tabled * W): the same rows' codes as
                     machine words, W per code, so a bucket's codes are read sequentially
    mih_offsets.i64  .npy int64 (m, 2 ** max_len + 1): bucket boundaries

all memory-mapped by `load`, so an index of a million entries opens in milliseconds.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from hashsearch.codes import word_view
from hashsearch.index._scan import (
    _BLOCKS_PER_THREAD,
    _INT64_MAX,
    _run,
    keys_to_range,
    keys_to_search,
    knn_keys,
    merge_keys,
    query_words,
    range_keys,
)
from hashsearch.index.base import register_index
from hashsearch.index.flat import FlatIndex
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult
from hashsearch.validation import check_int

MIH_VERSION = 1
# Default substring length: 2 ** 16 buckets a table (512 KiB of offsets), ~ log2 of 65k entries.
_SUBSTRING_BITS = 16
# Substrings longer than this would need tables of over 2 ** 24 buckets.
_MAX_SUBSTRING_BITS = 24
# The tail of rows added since the last build is scanned linearly up to this share of the table.
_TAIL_SHARE = 8


def substring_bounds(n_bits: int, n_substrings: int) -> np.ndarray:
    """Bit boundaries (m + 1,) of m substrings; the first n_bits % m are one bit longer."""
    base, extra = divmod(n_bits, n_substrings)
    lens = [base + 1] * extra + [base] * (n_substrings - extra)
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def substring_values(data: np.ndarray, n_bits: int, bounds: np.ndarray) -> np.ndarray:
    """Integer value (n, m) of every substring of packed codes (bit order as in `Codes`)."""
    n, m = len(data), len(bounds) - 1
    out = np.empty((n, m), np.int64)
    step = 1 << 16
    for a in range(0, n, step):
        bits = np.unpackbits(np.asarray(data[a : a + step]), axis=1, count=n_bits)
        for j in range(m):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            weights = np.int64(1) << np.arange(hi - lo - 1, -1, -1, dtype=np.int64)
            out[a : a + step, j] = bits[:, lo:hi].astype(np.int64) @ weights
    return out


def substring_masks(n_bits: int, bounds: np.ndarray, dtype=np.uint64) -> np.ndarray:
    """(m, W) machine words of `dtype` (as `word_view` makes them) with the bits of each substring
    set, computed once per (n_bits, bounds, dtype): a search of one query spent as long building
    them as searching. Shared: do not write to it (left writable: a read-only array is another
    numba type, so the kernels would be compiled, and cached, a second time)."""
    return _substring_masks(int(n_bits), tuple(int(b) for b in bounds), np.dtype(dtype).str)


@functools.lru_cache(maxsize=64)
def _substring_masks(n_bits: int, bounds: tuple[int, ...], dtype: str) -> np.ndarray:
    m = len(bounds) - 1
    bits = np.zeros((m, n_bits), np.uint8)
    for j in range(m):
        bits[j, bounds[j] : bounds[j + 1]] = 1
    return word_view(Codes.from_bits(bits).data).astype(dtype)


@register_index("mih")
class MIHIndex(FlatIndex):
    """Exact Hamming search by multi-index hashing; same answers as "flat", ties included.

    Parameters
    ----------
    n_bits
        Code length.
    n_substrings
        m, the number of substrings (hash tables). Default: ceil(n_bits / 16), i.e. 16-bit
        substrings; Norouzi et al. suggest substrings of about log2(n) bits. Each substring
        has at most 24 bits.
    n_threads
        Threads a search uses (default: every core).

    Examples
    --------
    >>> import numpy as np
    >>> from hashsearch.codes import pack_bits
    >>> index = MIHIndex(n_bits=32)
    >>> ids = index.add(pack_bits(np.random.default_rng(0).integers(0, 2, (1000, 32))))
    >>> index.search(index.get_codes(ids[:2]), k=1).ids.tolist()
    [[0], [1]]
    """

    exact = True

    def __init__(self, n_bits: int, n_substrings: int | None = None, n_threads: int | None = None) -> None:
        super().__init__(n_bits, n_threads=n_threads)
        if n_substrings is None:
            n_substrings = -(-self.n_bits // _SUBSTRING_BITS)
        self.n_substrings = check_int(
            "n_substrings",
            n_substrings,
            low=-(-self.n_bits // _MAX_SUBSTRING_BITS),
            high=self.n_bits,
            note=f"substrings of at most {_MAX_SUBSTRING_BITS} bits, at least 1 bit each of n_bits={self.n_bits}",
        )
        self._bounds = substring_bounds(self.n_bits, self.n_substrings)
        self._lens = np.diff(self._bounds)
        self._tabled = 0
        self._rows_tab = np.zeros((self.n_substrings, 0), np.int32)
        self._tcodes = np.zeros((self.n_substrings, 0), np.uint64)
        self._offsets = np.zeros((self.n_substrings, 2), np.int64)

    def __repr__(self) -> str:
        return f"MIHIndex(n_bits={self.n_bits}, n_substrings={self.n_substrings}, count={len(self)})"

    # -- tables -------------------------------------------------------------------------
    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id (unknown ids are ignored); the tables are rebuilt on the next search."""
        removed = super().remove(ids)
        if removed:
            self._tabled = 0
        return removed

    def build(self) -> None:
        """Build the hash tables over every stored row now (searches do it when needed)."""
        self._build(
            lambda name, shape, dtype: np.zeros(shape, dtype) if name == "mih_offsets.i64" else np.empty(shape, dtype)
        )

    def _build(self, alloc) -> None:
        """Build the tables into the arrays `alloc(file name, shape, dtype)` gives (in memory, or
        memory-mapped files that `save` writes in place)."""
        n = len(self)
        if n >= np.iinfo(np.int32).max:
            raise ValueError(f"mih holds at most {np.iinfo(np.int32).max - 1} entries, got {n}")
        from hashsearch.index import _kernels

        # One substring at a time and a counting sort: beside the tables themselves, a build
        # needs one uint32 per entry (10^8 entries of 64 bits: 4.8 GB of tables, 0.4 GB more).
        size = 1 << int(self._lens.max())
        codes = np.ascontiguousarray(self._codes[:n])
        words = word_view(codes)
        rows = alloc("mih_rows.i32", (self.n_substrings, n), np.int32)
        tcodes = alloc("mih_words.npy", (self.n_substrings, words.size), words.dtype)
        offsets = alloc("mih_offsets.i64", (self.n_substrings, size + 1), np.int64)
        offsets[:] = 0
        v = np.empty(n, np.uint32)
        for j in range(self.n_substrings):
            _kernels.substring_column(codes, int(self._bounds[j]), int(self._bounds[j + 1]), v, offsets[j])
            np.cumsum(offsets[j], out=offsets[j])
            _kernels.bucket_fill(v, offsets[j], words, rows[j], tcodes[j])
        self._rows_tab, self._tcodes, self._offsets, self._tabled = rows, tcodes, offsets, n

    def _ensure_tables(self) -> None:
        if len(self) - self._tabled > self._tabled // _TAIL_SHARE:
            self.build()

    def _budget(self) -> int:
        # Probes plus candidates beyond which a linear scan of the table is the cheaper way.
        return max(256, self._tabled // 4)

    # -- search -------------------------------------------------------------------------
    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest entries of each query, sorted by (Hamming distance, id); as "flat"."""
        self._check_codes(queries, "queries")
        k = self._check_k(k)
        n, nq = len(self), len(queries)
        if n == 0 or nq == 0:
            return SearchResult(np.full((nq, k), -1, np.int32), np.full((nq, k), MISSING_ID, np.int64))
        self._ensure_tables()
        words, rank, sorted_ids, ascending = self._scan_state()
        qw = query_words(queries, words)
        kk = min(k, n)
        parts = []
        if self._tabled:
            parts.append(self._table_knn(queries, qw, words, rank, ascending, n, kk))
        if self._tabled < n:
            parts.append(knn_keys(qw, words, rank, ascending, self._tabled, n, n, kk, self.n_bits, self.n_threads))
        keys = merge_keys(parts, kk) if len(parts) > 1 else parts[0]
        if k > n:
            keys = np.concatenate([keys, np.full((nq, k - n), _INT64_MAX)], axis=1)
        return keys_to_search(keys, n, sorted_ids)

    def _blocks(self, nq: int) -> list[slice]:
        block = max(1, -(-nq // (self.n_threads * _BLOCKS_PER_THREAD)))
        return [slice(a, a + block) for a in range(0, nq, block)]

    def _table_knn(self, queries: Codes, qw, words, rank, ascending: bool, n_keys: int, k: int) -> np.ndarray:
        from hashsearch.index import _kernels

        qsub = substring_values(queries.data, self.n_bits, self._bounds)
        out = np.full((len(queries), k), _INT64_MAX, np.int64)
        flat = words.reshape(-1)
        budget = self._budget()
        smasks = substring_masks(self.n_bits, self._bounds, words.dtype)

        def task(sl: slice) -> None:
            _kernels.mih_knn(
                qw[sl],
                qsub[sl],
                flat,
                rank,
                int(ascending),
                n_keys,
                k,
                self.n_bits,
                self._lens,
                self._offsets,
                self._rows_tab,
                self._tcodes,
                self._tabled,
                budget,
                out[sl],
                smasks,
            )

        _run([lambda sl=sl: task(sl) for sl in self._blocks(len(queries))], self.n_threads)
        return out

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """Every entry within Hamming distance `radius` (inclusive), sorted by (distance, id)."""
        from hashsearch.index import _kernels

        self._check_codes(queries, "queries")
        radius = check_int("radius", radius, low=0)
        n, nq = len(self), len(queries)
        if n == 0 or nq == 0:
            return RangeResult(np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
        self._ensure_tables()
        words, rank, sorted_ids, _ = self._scan_state()
        qw = query_words(queries, words)
        counts, keys = np.zeros(nq, np.int64), np.zeros(0, np.int64)
        if self._tabled:
            qsub = substring_values(queries.data, self.n_bits, self._bounds)
            flat = words.reshape(-1)
            budget = self._budget()
            smasks = substring_masks(self.n_bits, self._bounds, words.dtype)

            def task(sl: slice):
                return _kernels.mih_range(
                    qw[sl],
                    qsub[sl],
                    flat,
                    rank,
                    n,
                    radius,
                    self._lens,
                    self._offsets,
                    self._rows_tab,
                    self._tcodes,
                    self._tabled,
                    budget,
                    smasks,
                )

            parts = _run([lambda sl=sl: task(sl) for sl in self._blocks(nq)], self.n_threads)
            counts = np.concatenate([c for c, _ in parts])
            keys = np.concatenate([k for _, k in parts])
        if self._tabled < n:
            c2, k2 = range_keys(qw, words, rank, self._tabled, n, n, radius, self.n_threads)
            qidx = np.concatenate([np.repeat(np.arange(nq), counts), np.repeat(np.arange(nq), c2)])
            allk = np.concatenate([keys, k2])
            keys = allk[np.lexsort((allk, qidx))]
            counts = counts + c2
        return keys_to_range(counts, keys, n, sorted_ids)

    # -- persistence --------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write the flat files plus the hash tables into `directory`.

        Stale tables are built straight into their files there (memory-mapped), so saving a
        large index needs no second copy of the tables in memory (10^8 entries of 64 bits:
        4.8 GB of tables); the index then searches those files.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"directory {str(directory)!r} does not exist; create it before saving")
        if self._tabled != len(self) or self._offsets.shape[1] != (1 << int(self._lens.max())) + 1:
            made: dict[str, Path] = {}

            def alloc(name, shape, dtype):
                made[name] = directory / f".{name}.tmp-{os.getpid()}"
                return np.lib.format.open_memmap(made[name], mode="w+", dtype=dtype, shape=shape)

            try:
                self._build(alloc)
                for arr in (self._rows_tab, self._tcodes, self._offsets):
                    arr.flush()
                self._made = made
                super().save(directory)
            finally:
                self._made = {}
                for path in made.values():
                    path.unlink(missing_ok=True)  # renamed into place on success
        else:
            super().save(directory)

    def _extra_meta(self) -> dict:
        return {"mih": {"version": MIH_VERSION, "n_substrings": self.n_substrings, "tabled": self._tabled}}

    def _extra_arrays(self) -> dict[str, np.ndarray | Path]:
        arrays = {"mih_rows.i32": self._rows_tab, "mih_words.npy": self._tcodes, "mih_offsets.i64": self._offsets}
        # Tables `save` has just built in files: those files are moved into place, not copied.
        return {name: getattr(self, "_made", {}).get(name, arr) for name, arr in arrays.items()}

    def _load_extra(self, directory: Path, meta: dict, mmap_mode: str | None) -> None:
        info = meta.get("mih")
        if not isinstance(info, dict) or info.get("version") != MIH_VERSION:
            raise ValueError(
                f"{directory}/index.json has mih entry {info!r}; this hashsearch reads mih version {MIH_VERSION}"
            )
        m, tabled = info.get("n_substrings"), info.get("tabled")
        if not (isinstance(m, int) and isinstance(tabled, int) and 0 <= tabled <= self._count):
            raise ValueError(f"{directory}/index.json has a damaged mih entry {info!r}")
        fresh = type(self)(self.n_bits, n_substrings=m)  # validates m, gives bounds
        self.n_substrings, self._bounds, self._lens = fresh.n_substrings, fresh._bounds, fresh._lens
        try:
            rows = np.load(directory / "mih_rows.i32", mmap_mode=mmap_mode, allow_pickle=False)
            tcodes = np.load(directory / "mih_words.npy", mmap_mode=mmap_mode, allow_pickle=False)
            offsets = np.load(directory / "mih_offsets.i64", mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{directory} has missing or damaged mih tables: {e}") from e
        size = 1 << int(self._lens.max())
        if (
            rows.dtype != np.int32
            or rows.shape != (m, tabled)
            or offsets.dtype != np.int64
            or offsets.shape != (m, size + 1)
        ):
            raise ValueError(
                f"{directory}: mih tables hold {rows.dtype} {rows.shape} and {offsets.dtype} {offsets.shape}, "
                f"expected int32 ({m}, {tabled}) and int64 ({m}, {size + 1}); the index is damaged"
            )
        # Bounds checks, so a damaged table is an error rather than a read out of bounds.
        if (offsets[:, 0] != 0).any() or (offsets[:, -1] != tabled).any() or (np.diff(offsets, axis=1) < 0).any():
            raise ValueError(f"{directory}/mih_offsets.i64 is not a valid bucket table; the index is damaged")
        # Row numbers are range-checked by the search kernels as they read them, not here: opening
        # 10^8 entries then reads no table (a damaged row is a ValueError at search, not a wrong answer).
        words = word_view(np.zeros((1, (self.n_bits + 7) // 8), np.uint8))
        if tcodes.dtype != words.dtype or tcodes.shape != (m, tabled * words.shape[1]):
            raise ValueError(
                f"{directory}/mih_words.npy holds {tcodes.dtype} {tcodes.shape}, expected {words.dtype} "
                f"({m}, {tabled * words.shape[1]}); the index is damaged"
            )
        self._rows_tab, self._tcodes, self._offsets, self._tabled = rows, tcodes, offsets, tabled
