"""Milvus back end: codes in a BINARY_VECTOR field searched with the HAMMING metric.

The path for collections that outgrow one machine. By default it runs embedded on Milvus
Lite (a local ``.db`` file; binary vectors need Milvus Lite 2.4/2.5, not 3.x); given
``uri="http://host:19530"`` the same code talks to a Milvus server or cluster.

- Index type: BIN_FLAT (exact distances; the only one Milvus Lite has) or, on a server,
  BIN_IVF_FLAT (``index_type="BIN_IVF_FLAT"``, ``nlist``/``nprobe``; approximate).
- Bits: our packed bytes are sent as they are; Milvus reads byte i as dimensions 8i..8i+7,
  and Hamming distance only needs both sides packed alike, which they are (padding bits are
  zero on both). tests/index/test_milvus.py checks distances and round trips bit by bit.
- Ties: Milvus does not order equal distances by id. A search asks for k + 1 neighbours; where
  the (k+1)-th distance equals the k-th, the tie may continue, so that query is completed by
  a Milvus range search up to the k-th distance and the tie group is ordered by id. With
  BIN_FLAT this gives exactly the brute-force (distance, id) order, so `exact` is True.
- Limits: Milvus returns at most 16,384 results per query (its topk limit). A search with a
  larger k, a tie group or range result that reaches the limit raises ValueError rather than
  return a silently truncated answer.
- Servers: tested against Milvus 2.3.5 standalone (the PyPI package ``milvus``; see
  tests/distributed/test_milvus_server.py). A server that cannot be reached, or refuses the token
  (``token=``, else HASHSEARCH_MILVUS_TOKEN), is a ConnectionError naming the URI and what to do.
  Searches use "Session" consistency: they see this process's writes, without waiting for the
  server's time tick when nothing was written since; the first search after a delete uses
  "Strong" (a Session search on a loaded 2.3.5 server once still found a deleted id).
- Ids and codes are mirrored in this process (a FlatIndex): the collection is assumed to have
  this index as its only writer. `save` writes the mirror plus ``index.json``; `load` of a
  Milvus Lite index opens ``milvus.db`` in the index directory (re-filled from the mirror if
  the collection is missing), of a server index reconnects to its collection.

pymilvus is imported here only, when an index is built or loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from hashsearch.index.base import MirroredIndex, read_index_meta, register_index
from hashsearch.index.flat import FlatIndex, _as_id_array
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult
from hashsearch.validation import check_int

FORMAT = "hashsearch-milvus-index"
FORMAT_VERSION = 1
#: The most results Milvus returns for one query.
TOPK_LIMIT = 16384
_INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
_INSERT_BATCH = 10_000
#: Searches see every write of this process ("Session"): exact, and with no wait when nothing was
#: written since. "Strong" (the collections' default) waits for the server's next time tick, up to
#: 200 ms a search on a Milvus 2.3 standalone server; writes of other processes made before `load` are
#: seen because `load` counts the entities with "Strong" consistency first.
_CONSISTENCY = "Session"
#: The environment variable a server's credentials are read from when no token is passed.
TOKEN_ENV = "HASHSEARCH_MILVUS_TOKEN"


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError as e:  # pragma: no cover - installed with the "search" extra
        raise ImportError(
            "the milvus index back end needs pymilvus and milvus-lite: pip install 'hashsearch[search]'"
        ) from e
    return pymilvus


def _is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


@register_index("milvus")
class MilvusIndex(MirroredIndex):
    """Hamming search in a Milvus collection (Milvus Lite by default).

    Parameters
    ----------
    n_bits
        Code length (Milvus stores whole bytes; padding bits are zero).
    uri
        A Milvus Lite ``.db`` path, or a server URI such as ``http://localhost:19530``.
        Default: a Lite database in a new temporary folder (moved beside the index by `save`).
    collection
        Collection name; default a new unique one.
    if_exists
        What to do when `collection` exists: "error" (default), or "clear": delete all its
        entities and use it (the schema must fit these codes).
    index_type
        "BIN_FLAT" (exact) or "BIN_IVF_FLAT" (servers only; approximate).
    nlist, nprobe
        BIN_IVF_FLAT's number of lists and lists probed per search.
    token
        Credentials for a server, passed to pymilvus as they are; default the environment variable
        ``HASHSEARCH_MILVUS_TOKEN`` (so a collection on such a server reopens through
        `Collection.open`, which passes no back-end options), else none. Never written to disk.
    """

    exact = True  # with BIN_FLAT; an instance with BIN_IVF_FLAT sets False

    #: The next search waits for the server's time tick ("Strong"): set by a delete.
    _strong_next = False

    def __init__(
        self,
        n_bits: int,
        uri: str | None = None,
        collection: str | None = None,
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 16,
        token: str | None = None,
        if_exists: str = "error",
    ) -> None:
        super().__init__(n_bits)
        if if_exists not in ("error", "clear"):
            raise ValueError(f"if_exists must be 'error' or 'clear', got {if_exists!r}")
        if index_type not in _INDEX_TYPES:
            raise ValueError(f"index_type must be one of {', '.join(_INDEX_TYPES)}, got {index_type!r}")
        self.index_type = index_type
        self.exact = index_type == "BIN_FLAT"
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self._tmpdir = None
        if uri is None:
            self._tmpdir = tempfile.mkdtemp(prefix="hashsearch-milvus-")
            uri = os.path.join(self._tmpdir, "milvus.db")
        self.uri = str(uri)
        self.collection = collection or f"hashsearch_{uuid.uuid4().hex}"
        self._token = _token(token)
        self._store = FlatIndex(self.n_bits)
        self._client = self._connect()
        if if_exists == "clear" and self._client.has_collection(self.collection):
            self._clear_collection()
        else:
            self._create_collection()

    def __repr__(self) -> str:
        return f"MilvusIndex(n_bits={self.n_bits}, uri={self.uri!r}, collection={self.collection!r}, count={len(self)})"

    # -- connection ---------------------------------------------------------------------
    def _connect(self):
        """A client for `uri`; a server that cannot be reached or refuses the token is a ConnectionError."""
        pymilvus = _import_pymilvus()
        if _is_lite(self.uri):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            return pymilvus.MilvusClient(uri=self.uri, token=self._token)
        try:
            with _quiet_pymilvus():  # it logs each failed attempt; the error below says it once
                return pymilvus.MilvusClient(uri=self.uri, token=self._token)
        except Exception as e:
            raise ConnectionError(_connect_error(self.uri, self._token, e)) from None

    def _create_collection(self) -> None:
        pymilvus = _import_pymilvus()
        if self._client.has_collection(self.collection):
            raise ValueError(
                f"collection {self.collection!r} already exists at {self.uri}; pick another name, or "
                "open a saved index with MilvusIndex.load"
            )
        schema = self._client.create_schema(auto_id=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("code", pymilvus.DataType.BINARY_VECTOR, dim=8 * ((self.n_bits + 7) // 8))
        params = self._client.prepare_index_params()
        extra = {"nlist": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
        params.add_index(field_name="code", index_type=self.index_type, metric_type="HAMMING", params=extra)
        self._client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")

    def _clear_collection(self) -> None:
        fields = {f["name"]: f for f in self._client.describe_collection(self.collection)["fields"]}
        dim = fields.get("code", {}).get("params", {}).get("dim")
        if dim is None or int(dim) != 8 * ((self.n_bits + 7) // 8):
            raise ValueError(
                f"collection {self.collection!r} at {self.uri} has code dim {dim!r}, not "
                f"{8 * ((self.n_bits + 7) // 8)} for {self.n_bits}-bit codes; it cannot be reused"
            )
        self._client.delete(self.collection, filter="id >= 0")

    def _search_params(self, **extra) -> dict:
        params = {"nprobe": self.nprobe} if self.index_type == "BIN_IVF_FLAT" else {}
        params.update(extra)
        return {"metric_type": "HAMMING", "params": params}

    # -- contents -----------------------------------------------------------------------
    def fetch_codes(self, ids: np.ndarray) -> Codes:
        """Codes of `ids` as Milvus stores them (for checks; `get_codes` reads the local mirror)."""
        ids = _as_id_array(ids)
        rows = self._client.get(self.collection, ids=ids.tolist(), output_fields=["code"])
        by_id = {int(r["id"]): r["code"] for r in rows}
        missing = [i for i in ids.tolist() if i not in by_id]
        if missing:
            raise KeyError(f"ids not in the collection: {missing[:10]}")
        data = [by_id[i][0] if isinstance(by_id[i], list) else by_id[i] for i in ids.tolist()]
        return Codes(np.frombuffer(b"".join(data), np.uint8).reshape(len(ids), -1).copy(), self.n_bits)

    def add(self, codes: Codes, ids: np.ndarray | None = None) -> np.ndarray:
        """Add entries (validated as in "flat", before anything is sent); returns their ids."""
        self._check_codes(codes)
        new_ids = self._store.add(codes, ids)
        self._insert(codes.data, new_ids)
        return new_ids

    def _insert(self, data: np.ndarray, ids: np.ndarray) -> None:
        for a in range(0, len(ids), _INSERT_BATCH):
            rows = [
                {"id": int(i), "code": c.tobytes()}
                for i, c in zip(ids[a : a + _INSERT_BATCH], data[a : a + _INSERT_BATCH])
            ]
            self._client.insert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id (unknown ids are ignored); returns how many were removed."""
        ids = _as_id_array(ids)
        present = ids[np.isin(ids, self._store.ids)] if len(ids) else ids
        removed = self._store.remove(present)
        if removed:
            self._client.delete(self.collection, ids=present.tolist())
            self._strong_next = True  # a Session search right after a delete could still see it (CI, 2.3.5)
        return removed

    # -- search -------------------------------------------------------------------------
    def _query(self, queries: Codes, limit: int, **params) -> list[list[tuple[int, int]]]:
        res = self._client.search(
            self.collection,
            data=[row.tobytes() for row in queries.data],
            limit=limit,
            search_params=self._search_params(**params),
            output_fields=[],
            consistency_level="Strong" if self._strong_next else _CONSISTENCY,
        )
        self._strong_next = False
        return [[(int(round(h["distance"])), int(h["id"])) for h in hits] for hits in res]

    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest entries, sorted by (Hamming distance, id); exact with BIN_FLAT."""
        self._check_codes(queries, "queries")
        k = self._check_k(k)
        nq, n = len(queries), len(self)
        out_d = np.full((nq, k), -1, np.int32)
        out_i = np.full((nq, k), MISSING_ID, np.int64)
        if n == 0 or nq == 0:
            return SearchResult(out_d, out_i)
        kk = min(k, n)
        fetch = min(kk + 1, n)
        if fetch > TOPK_LIMIT:
            raise ValueError(
                f"k={k} needs {fetch} results per query but Milvus returns at most {TOPK_LIMIT - 1} + 1; "
                "ask for fewer neighbours or use the 'flat' or 'mih' back end"
            )
        hits = self._query(queries, fetch)
        for qi, found in enumerate(hits):
            found.sort()
            if len(found) > kk and found[kk][0] == found[kk - 1][0]:
                found = self._complete_tie(queries[qi : qi + 1], found[kk - 1][0], kk)
            top = found[:kk]
            out_d[qi, : len(top)] = [d for d, _ in top]
            out_i[qi, : len(top)] = [i for _, i in top]
        return SearchResult(out_d, out_i)

    def _complete_tie(self, query: Codes, dist: int, k: int) -> list[tuple[int, int]]:
        """Every entry within `dist` of the query, sorted; refuses if Milvus's limit truncates it."""
        found = sorted(self._range(query, dist)[0])
        return found[:k]

    def _range(self, queries: Codes, radius: int) -> list[list[tuple[int, int]]]:
        # Milvus range search on HAMMING returns range_filter <= distance < radius.
        hits = self._query(queries, TOPK_LIMIT, radius=radius + 1, range_filter=-1)
        for found in hits:
            if len(found) >= TOPK_LIMIT:
                raise ValueError(
                    f"a query has {TOPK_LIMIT} or more entries within distance {radius}, the most Milvus "
                    "returns; use a smaller radius or the 'flat' or 'mih' back end"
                )
        return hits

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """Every entry within `radius` (inclusive), sorted by (distance, id)."""
        self._check_codes(queries, "queries")
        radius = check_int("radius", radius, low=0)
        nq = len(queries)
        lims = np.zeros(nq + 1, np.int64)
        if nq == 0 or len(self) == 0:
            return RangeResult(lims, np.zeros(0, np.int32), np.zeros(0, np.int64))
        hits = [sorted(f) for f in self._range(queries, radius)]
        np.cumsum([len(f) for f in hits], out=lims[1:])
        flat = [pair for f in hits for pair in f]
        d = np.array([p[0] for p in flat], np.int32)
        i = np.array([p[1] for p in flat], np.int64)
        return RangeResult(lims, d, i)

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write index.json and the id/code mirror (store/) into the existing `directory`.

        An index on a temporary Milvus Lite database also gets ``milvus.db`` in `directory`
        when it is loaded (re-filled from the mirror); a server's collection stays where it is, and is
        flushed: its entities are sealed into segments the server persists and indexes (until then
        they sit in growing segments that every search scans: 116 ms a query at k = 10 instead of
        6.5 ms on 200,000 64-bit codes, benchmarks/results/milvus-server.md).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"directory {str(directory)!r} does not exist; create it before saving")
        (directory / "store").mkdir(exist_ok=True)
        self._store.save(directory / "store")
        lite = _is_lite(self.uri)
        if not lite:
            self._client.flush(self.collection)
        in_dir = lite and Path(self.uri).resolve().parent == directory.resolve()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backend": self.name,
            "n_bits": self.n_bits,
            "uri": None if lite and not in_dir else (os.path.basename(self.uri) if in_dir else self.uri),
            "collection": self.collection,
            "index_type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "count": len(self),
        }
        tmp = directory / f".index.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, directory / "index.json")

    @classmethod
    def load(cls, directory: str | os.PathLike, token: str | None = None) -> MilvusIndex:
        """Reopen a saved index: Milvus Lite in `directory`/milvus.db, or the server it names."""
        _import_pymilvus()
        directory = Path(directory)
        meta = read_index_meta(directory, cls.name, FORMAT, FORMAT_VERSION)
        store = FlatIndex.load(directory / "store", mmap=False)
        if len(store) != meta.get("count") or store.n_bits != meta.get("n_bits"):
            raise ValueError(f"{directory}/store disagrees with index.json; the index is damaged")
        uri = meta.get("uri")
        server = isinstance(uri, str) and not _is_lite(uri)
        self = cls.__new__(cls)
        MirroredIndex.__init__(self, meta["n_bits"])
        self.index_type = meta.get("index_type", "BIN_FLAT")
        self.exact = self.index_type == "BIN_FLAT"
        self.nlist, self.nprobe = int(meta.get("nlist", 1024)), int(meta.get("nprobe", 16))
        self._tmpdir = None
        self.uri = str(uri) if server else str(directory / "milvus.db")
        self.collection = meta["collection"]
        self._token = _token(token)
        self._store = store
        self._client = self._connect()
        if self._client.has_collection(self.collection):
            stats = self._client.query(
                self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
            count = int(stats[0]["count(*)"]) if stats else -1
            if count != len(store):
                raise ValueError(
                    f"collection {self.collection!r} at {self.uri} holds {count} entries but the saved index "
                    f"has {len(store)}; it was changed by another writer or the index is damaged"
                )
        elif server:
            raise ValueError(f"collection {self.collection!r} does not exist at {self.uri}")
        else:
            self._create_collection()
            self._insert(store._codes[: len(store)], store.ids)
        return self

    def close(self) -> None:
        """Close the connection (and delete a temporary Milvus Lite database)."""
        try:
            self._client.close()
        finally:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None


@contextlib.contextmanager
def _quiet_pymilvus():
    """Silence pymilvus's own error log lines for the duration (it has handlers of its own)."""
    loggers = [logging.getLogger(n) for n in ("pymilvus", "pymilvus.milvus_client")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _connect_error(uri: str, token: str, e: Exception) -> str:
    """One line saying why a server connection failed and what to do."""
    code_of, details_of = getattr(e, "code", None), getattr(e, "details", None)  # grpc errors have both
    code = code_of() if callable(code_of) else None
    if getattr(code, "name", None) == "UNAUTHENTICATED":
        detail = details_of() if callable(details_of) else str(e)
        given = "a token that it refused" if token else "no token"
        return (
            f"the Milvus server at {uri} needs credentials and got {given} ({detail}); set "
            f"{TOKEN_ENV}='user:password' (or the server's API key) and run again"
        )
    reason = getattr(e, "message", None) or str(e).splitlines()[0]
    return f"cannot connect to a Milvus server at {uri}: {reason}; check that it runs and the address is right"


def _token(token: str | None) -> str:
    """A server's credentials: as given, else from HASHSEARCH_MILVUS_TOKEN, else none."""
    return os.environ.get(TOKEN_ENV, "") if token is None else token
