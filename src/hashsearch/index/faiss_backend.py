"""faiss binary indexes behind the Index interface: ``create_index("faiss:BHNSW32", n_bits=64)``.

Any faiss binary factory string works after ``faiss:``; the ones meant here are

=================  ==============================  =======================================
factory            faiss class                     exact?
=================  ==============================  =======================================
``BFlat``          IndexBinaryFlat                 yes (ties re-ranked by id, see below)
``BHNSW32``        IndexBinaryHNSW (32 links)      no: graph search, recall < 1
``BIVF256``        IndexBinaryIVF (256 lists)      no: probes `nprobe` lists (default 1)
``BHash2x16``      IndexBinaryMultiHash            no: 2 tables of 16-bit prefixes, `nflip`
=================  ==============================  =======================================

Ids are our ids: the faiss index is wrapped in an IndexBinaryIDMap2. `remove` calls faiss's
`remove_ids` where the index supports it (BFlat, BIVF) and otherwise records the id as a
tombstone, filtered out of results (searches then fetch that many more neighbours). A copy
of the codes is kept beside faiss (a FlatIndex) for `get_codes`, the id bookkeeping, and to
answer exactly where faiss cannot: range search on HNSW, and searches of an IVF index before
it has seen enough codes to train (`train_size`, default 39 per list, faiss's minimum).

Exactness of "BFlat": faiss computes exact distances but orders ties arbitrarily. Each search
asks faiss for k + 1 neighbours; where the (k+1)-th distance equals the k-th, the tie may
continue past k, so that query is completed by a faiss range search at the k-th distance and
the whole tie group is ordered by id. The result is exactly the brute-force (distance, id)
order. The approximate indexes are ordered by (distance, id) among what faiss returned.

faiss is imported here only, when an index is built or loaded.

On disk: ``index.json`` (format, version, factory, parameters), ``faiss.index`` (faiss's own
binary format, no pickle), ``dead.i64`` (tombstones) and the codes copy in ``store/`` (the
"flat" format, memory-mapped on load).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hashsearch.index._scan import default_threads
from hashsearch.index.base import MirroredIndex, read_index_meta, register_index
from hashsearch.index.flat import FlatIndex, _as_id_array
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult
from hashsearch.validation import check_int

FORMAT = "hashsearch-faiss-index"
FORMAT_VERSION = 1
#: Factories whose search is exact (after the tie completion described above).
EXACT_FACTORIES = ("BFlat",)


def _import_faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is installed with the "search" extra
        raise ImportError("the faiss index back end needs faiss-cpu: pip install 'hashsearch[search]'") from e
    return faiss


@register_index("faiss")
class FaissIndex(MirroredIndex):
    """A faiss binary index (chosen by a factory string) with our ids, removal and persistence.

    Parameters
    ----------
    n_bits
        Code length; faiss stores whole bytes, the padding bits are zero and add nothing.
    factory
        faiss binary factory string, e.g. "BFlat", "BHNSW32", "BIVF256", "BHash2x16".
    n_threads
        OpenMP threads faiss uses for a search (default: every core). faiss's setting is
        process-wide; it is set before each call.
    nprobe, ef_search, nflip
        Search parameters of IVF (lists probed), HNSW (candidate list size; at least k is
        used) and MultiHash (bits flipped per probe), where the index has them.
    train_size
        Codes needed before an index that must be trained (IVF) is trained and filled;
        until then searches scan the kept codes exactly. Default: 39 per IVF list.
    """

    exact = False  # per instance: True for "BFlat"

    def __init__(
        self,
        n_bits: int,
        factory: str = "BFlat",
        n_threads: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        nflip: int | None = None,
        train_size: int | None = None,
    ) -> None:
        super().__init__(n_bits)
        faiss = _import_faiss()
        if not isinstance(factory, str) or not factory or factory.upper().startswith("IDMAP"):
            raise ValueError(
                f"factory must be a faiss binary factory string such as 'BFlat', 'BHNSW32', 'BIVF256' "
                f"or 'BHash2x16' (ids are mapped for you: no 'IDMap'), got {factory!r}"
            )
        self.factory = factory
        self.exact = factory in EXACT_FACTORIES
        self._n_threads = check_int("n_threads", n_threads, low=1, allow_none=True, none_means="every core")
        self.params = {"nprobe": nprobe, "ef_search": ef_search, "nflip": nflip, "train_size": train_size}
        for key, value in self.params.items():
            check_int(key, value, low=1, allow_none=True)
        self._d = 8 * ((self.n_bits + 7) // 8)
        try:
            inner = faiss.index_binary_factory(self._d, factory)
        except RuntimeError as e:
            raise ValueError(
                f"faiss cannot build a binary index from factory {factory!r}: {str(e).splitlines()[0]}"
            ) from e
        self._index = faiss.IndexBinaryIDMap2(inner)  # keeps a reference to `inner`
        self._store: FlatIndex = FlatIndex(self.n_bits, n_threads=n_threads)
        self._dead = np.zeros(0, np.int64)  # tombstones: ids still in faiss but removed

    def __repr__(self) -> str:
        return f"FaissIndex(n_bits={self.n_bits}, factory={self.factory!r}, count={len(self)})"

    # -- the wrapped index --------------------------------------------------------------
    @property
    def faiss_index(self):
        """The faiss index (an IndexBinaryIDMap2 whose labels are our ids)."""
        return self._index

    def _inner(self):
        return _import_faiss().downcast_IndexBinary(self._index.index)

    @property
    def n_threads(self) -> int:
        return self._n_threads or default_threads()

    def _train_size(self) -> int:
        if self.params["train_size"]:
            return self.params["train_size"]
        return 39 * int(getattr(self._inner(), "nlist", 1))

    def _in_faiss(self) -> bool:
        return bool(self._index.is_trained) and self._index.ntotal > 0

    def _faiss_add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        if not self._index.is_trained:
            if len(self._store) < self._train_size():
                return  # stays in the store only; searched exactly until there are enough to train
            codes, ids = self._store._codes[: len(self._store)], self._store.ids
            self._index.train(np.ascontiguousarray(codes))
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids, dtype=np.int64))

    def _rebuild(self) -> None:
        """Refill faiss from the kept codes (drops tombstones; an IVF index keeps its training)."""
        self._index.reset()
        self._dead = np.zeros(0, np.int64)
        if self._index.is_trained and len(self._store):
            self._index.add_with_ids(np.ascontiguousarray(self._store._codes[: len(self._store)]), self._store.ids)

    def _set_search_params(self, k: int) -> None:
        faiss = _import_faiss()
        faiss.omp_set_num_threads(self.n_threads)
        inner = self._inner()
        if self.params["nprobe"] and hasattr(inner, "nprobe"):
            inner.nprobe = self.params["nprobe"]
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(k, self.params["ef_search"] or 16)
        if self.params["nflip"] is not None and hasattr(inner, "nflip"):
            inner.nflip = self.params["nflip"]

    # -- contents -----------------------------------------------------------------------
    def add(self, codes: Codes, ids: np.ndarray | None = None) -> np.ndarray:
        """Add entries (validated as in "flat"); returns their ids."""
        self._check_codes(codes)
        new_ids = self._store.add(codes, ids)
        if len(self._dead) and np.isin(new_ids, self._dead).any():
            # A tombstoned id comes back: faiss cannot hold it twice, so refill it.
            self._rebuild()
        else:
            self._faiss_add(codes.data, new_ids)
        return new_ids

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id (unknown ids are ignored); returns how many were removed."""
        ids = _as_id_array(ids)
        present = ids[np.isin(ids, self._store.ids)] if len(ids) else ids
        removed = self._store.remove(present)
        if removed and self._index.is_trained and self._index.ntotal:
            try:
                self._index.remove_ids(np.ascontiguousarray(present, dtype=np.int64))
            except RuntimeError:  # no remove_ids for this index type: tombstones
                self._dead = np.union1d(self._dead, present)
        return removed

    # -- search -------------------------------------------------------------------------
    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest entries found by faiss, sorted by (Hamming distance, id).

        Exact for "BFlat" (ties completed by range search); approximate otherwise.
        """
        self._check_codes(queries, "queries")
        k = self._check_k(k)
        nq = len(queries)
        if not self._in_faiss():
            return self._store.search(queries, k)
        self._set_search_params(k)
        total = self._index.ntotal
        fetch = min(total, k + len(self._dead) + (1 if self.exact else 0))
        D, I = self._index.search(np.ascontiguousarray(queries.data), fetch)
        out_d = np.full((nq, k), -1, np.int32)
        out_i = np.full((nq, k), MISSING_ID, np.int64)
        ragged = []
        for qi in range(nq):
            d, i = D[qi], I[qi]
            keep = i >= 0
            if len(self._dead):
                keep &= ~np.isin(i, self._dead)
            d, i = d[keep], i[keep]
            if self.exact and len(d) > k and d[k] == d[k - 1]:
                ragged.append(qi)  # the tie at the k-th distance may go on past what faiss returned
                continue
            order = np.lexsort((i, d))[:k]
            out_d[qi, : len(order)] = d[order]
            out_i[qi, : len(order)] = i[order]
        if ragged:
            rows = np.asarray(ragged)
            # Everything at or below the k-th distance, ordered by (distance, id).
            radius = D[rows, k - 1].astype(np.int64)
            for qi, r in zip(rows.tolist(), radius.tolist()):
                lims, d, i = self._index.range_search(np.ascontiguousarray(queries.data[qi : qi + 1]), int(r) + 1)
                if len(self._dead):
                    keep = ~np.isin(i, self._dead)
                    d, i = d[keep], i[keep]
                order = np.lexsort((i, d))[:k]
                out_d[qi, : len(order)] = d[order]
                out_i[qi, : len(order)] = i[order]
        return SearchResult(out_d, out_i)

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """Entries within `radius` (inclusive), sorted by (distance, id).

        Uses faiss's range search where the index has one (BFlat, BIVF, BHash: as exact as the
        index); HNSW has none, so its range search is an exact scan of the kept codes.
        """
        self._check_codes(queries, "queries")
        radius = check_int("radius", radius, low=0)
        if not self._in_faiss():
            return self._store.range_search(queries, radius)
        self._set_search_params(1)
        try:
            lims, d, i = self._index.range_search(np.ascontiguousarray(queries.data), radius + 1)  # faiss: d < radius
        except RuntimeError:
            return self._store.range_search(queries, radius)
        lims = lims.astype(np.int64)
        qidx = np.repeat(np.arange(len(queries)), np.diff(lims))
        keep = np.ones(len(i), bool) if not len(self._dead) else ~np.isin(i, self._dead)
        qidx, d, i = qidx[keep], d[keep].astype(np.int32), i[keep].astype(np.int64)
        order = np.lexsort((i, d, qidx))
        new_lims = np.zeros(len(queries) + 1, np.int64)
        np.cumsum(np.bincount(qidx, minlength=len(queries)), out=new_lims[1:])
        return RangeResult(new_lims, d[order], i[order])

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write index.json, faiss.index, dead.i64 and store/ into the existing `directory`."""
        faiss = _import_faiss()
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"directory {str(directory)!r} does not exist; create it before saving")
        (directory / "store").mkdir(exist_ok=True)
        self._store.save(directory / "store")
        tmp = directory / f".faiss.index.tmp-{os.getpid()}"
        faiss.write_index_binary(self._index, str(tmp))
        os.replace(tmp, directory / "faiss.index")
        tmp = directory / f".dead.i64.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, self._dead, allow_pickle=False)
        os.replace(tmp, directory / "dead.i64")
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backend": self.name,
            "factory": self.factory,
            "n_bits": self.n_bits,
            "params": self.params,
            "count": len(self),
            "faiss_ntotal": int(self._index.ntotal),
            "faiss_version": faiss.__version__,
        }
        tmp = directory / f".index.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, directory / "index.json")

    @classmethod
    def load(cls, directory: str | os.PathLike, n_threads: int | None = None) -> FaissIndex:
        """Read an index written by `save` (ValueError if files are missing or disagree)."""
        faiss = _import_faiss()
        directory = Path(directory)
        meta = read_index_meta(directory, cls.name, FORMAT, FORMAT_VERSION)
        params = meta["params"] if isinstance(meta.get("params"), dict) else {}
        n_bits, factory = meta.get("n_bits"), meta.get("factory")
        if not isinstance(n_bits, int) or not isinstance(factory, str):
            raise ValueError(
                f"{directory}/index.json has no code length or factory string: damaged; build the index again"
            )
        self = cls(n_bits, factory=factory, n_threads=n_threads, **params)
        self._store = FlatIndex.load(directory / "store")
        self._store._n_threads = self._n_threads
        try:
            index = faiss.read_index_binary(str(directory / "faiss.index"))
            dead = np.load(directory / "dead.i64", allow_pickle=False)
        except (RuntimeError, OSError, ValueError) as e:
            raise ValueError(
                f"{directory}: faiss.index or dead.i64 is missing or damaged: {str(e).splitlines()[0]}"
            ) from e
        expected = len(self._store) + len(dead) if index.is_trained else 0
        if not isinstance(index, faiss.IndexBinaryIDMap2) or index.d != self._d or index.ntotal not in (expected, 0):
            raise ValueError(
                f"{directory}/faiss.index holds {type(index).__name__} d={index.d} with {index.ntotal} codes; "
                f"expected an IndexBinaryIDMap2 of d={self._d} with {expected}; the index is damaged"
            )
        if dead.dtype != np.int64 or dead.ndim != 1 or len(self._store) != meta.get("count"):
            raise ValueError(f"{directory}: dead.i64 or store/ disagrees with index.json; the index is damaged")
        self._index, self._dead = index, dead
        if index.is_trained and index.ntotal == 0 and len(self._store):
            self._rebuild()
        return self
