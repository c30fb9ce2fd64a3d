"""A searchable collection: backbone + hasher + index + stored features + entry records.

On disk a collection is a folder (by convention named `*.hsx`) of immutable generations::

    photos.hsx/
      CURRENT                  names the live generation, e.g. "gen-000003"
      gen-000003/
        manifest.json          format, version, parameters, and the sha256 of every file below
        hasher.npz             the fitted hasher (no pickle)
        index/                 the index back end's own files (codes, ids)
        features.npy           the re-rank store's rows, in `feature_ids.npy` order: float16 backbone
                               features (store "full"), or their compact encoding (pca-N, int8, pq-M)
        feature_ids.npy
        rerank_store.npz       only with a compact re-rank store: its fitted parameters (no pickle)
        entries.sqlite         id -> (root, key below the root), label, content digest; roots
        <key>.onnx             only if built with int8: the int8 model that computed the features
        model.hsm              only if built with a trained model (`hashsearch index --model`): a copy
                               of it, so the collection needs nothing outside its folder
      uploads/                 images uploaded through the HTTP service (not part of a generation)

Entries name their files relative to a root (the folder a source was read from, the folder holding
an archive or a list file), and roots are absolute, or relative to the collection folder for
`uploads/`: a collection resolves its files from any working directory, and `relocate` repoints a
moved folder. Keys and labels are stored as the bytes the file system gave (`os.fsencode`), so
any name, valid UTF-8 or not, comes back exactly.

Segments. A collection that has a generation keeps its index (back ends flat and mih), re-rank
rows and entries as a *base* (the files above) and up to `MAX_DELTAS` *deltas*, named in the
manifest's "deltas" (format 4), each written by one save and never changed after::

      index.<d>/               the index segment of the entries that save added (flat when small)
      features.<d>.npy, feature_ids.<d>.npy   their re-rank rows
      entries.<d>.sqlite       the records that save added or rewrote (`entries`), the ids it
                               removed (`removed`), and every root (`roots`)

A save after an add or remove writes what changed as one delta and hard-links the base and the
older deltas: bytes in proportion to the change, not to the collection. Removed ids are
tombstones (the deltas' `removed` tables): searches of the segments together leave them out and
are exact (`hashsearch.index.segments.SegmentedIndex`); their rows and records stay in the older
files until a merge. Entries are read through one SQLite connection with the deltas attached and
temporary views `entries` and `roots` (a part's rows that no later part rewrote or removed), so
every lookup reads the live state. A save merges the deltas into one when there would be more
than `MAX_DELTAS`, and everything into a new base when the deltas hold more than
`MAX_DELTA_SHARE` of the collection in added, rewritten or removed entries, or when asked
(`compact`); a collection without deltas is written as format 2 or 3, the files as before 4.
Other back ends (faiss, milvus) are saved whole, as before.

A save writes a new generation beside the old one, fsyncs it, and only then replaces CURRENT
(an atomic rename), so a crash at any step of a save leaves the previous generation live and
intact, and the next save proceeds. A file whose part did not change since the live generation
(the model, the hasher, the re-rank store's parameters; the index and re-rank rows when only the
entries changed) is hard-linked from it instead of written again: nothing writes into a
generation's files once saved, so two generations can share an inode, and deleting the old one
leaves the new one's data in place. A save that fails resets the object to what is on disk.
Loading checks the format version and every checksum; a damaged file is an error, never a
wrong answer.

Several processes. An open collection holds a shared lock (`fcntl.flock`) on its generation's
manifest for as long as it holds that generation, and a save deletes an older generation only
when it can take that lock exclusively: a generation that a reader in another process (a running
`hashsearch serve`, a `search`) still holds stays on disk, its files readable, and a later save
deletes it once nobody holds it. `open` locks the generation before reading it, and takes the new
one if a save replaced it meanwhile. Saves into one folder are serialised by an exclusive lock on
the folder, and a save refuses (`CollectionError`) when another process saved a generation since
this object opened or saved its own: its change would silently drop the other's; open it again
and redo the change. `live_generation` and `generation` tell a long-running reader that another
process saved (the HTTP service then reopens the collection between requests), `close` lets go
of a generation, and `remove_old_generations` deletes those nobody holds (never during a save).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from hashsearch.backbones import Backbone, create_backbone
from hashsearch.codes import hamming_distances
from hashsearch.data.sources import read_key, split_key
from hashsearch.fileio import check_header, file_identity, file_sha256, fsync_path, same_content, share_file
from hashsearch.hashing import Hasher
from hashsearch.index import Index, create_index, index_backends
from hashsearch.index.coarse_to_fine import coarse_to_fine
from hashsearch.index.rerank_store import FullStore, RerankStore, create_rerank_store
from hashsearch.index.segments import SegmentedIndex, contains
from hashsearch.model import TrainedModel
from hashsearch.types import MISSING_ID, SearchResult
from hashsearch.validation import check_choice, check_int

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: generations are not locked (one process at a time)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "hashsearch-collection"
# 2: entries keyed by (root, relative key) as bytes, a roots table, the int8 model kept.
# 3: a compact re-rank store (rerank_store.npz; features.npy holds its rows). A collection that
#    keeps whole features (store "full") is still written as 2: a hashsearch before 3 reads it
#    as it always did, and refuses a compact one (its rows are not features) instead of misreading it.
# 4: segments (the manifest's "deltas": index.<d>/, features.<d>.npy, feature_ids.<d>.npy,
#    entries.<d>.sqlite beside the base's files). Written only while a collection has deltas: one
#    with none (a new or compacted one) is written as 2 or 3, its files as before.
FORMAT_VERSION = 4
#: The versions `Collection.open` reads.
READ_VERSIONS = (2, 3, 4)
#: A save merges the deltas into one when there would be more than this many (SQLite attaches at
#: most 10 databases to a connection: the base and the deltas are read through one).
MAX_DELTAS = 8
#: A save merges everything into one base when the deltas hold more entries added, rewritten or
#: removed than this share of the collection's entries.
MAX_DELTA_SHARE = 0.25
#: A collection's fitted compact re-rank store (`hashsearch.index.rerank_store`).
RERANK_STORE_FILE = "rerank_store.npz"
#: The folder, inside a collection, of the images uploaded through the HTTP service.
UPLOADS = "uploads"
#: A collection's copy of the trained model that built it (`hashsearch.model`).
MODEL_FILE = "model.hsm"
#: Index back ends whose saved files nothing writes into afterwards (loaded memory-mapped read-only,
#: copied on their first change): a save may hard-link them into the next generation. Not milvus
#: (Milvus Lite's database file is written in place) nor faiss.
_IMMUTABLE_INDEX_BACKENDS = ("flat", "mih")
#: Files up to this size that a save writes anyway are compared with the previous generation's
#: and linked to it when equal (the hasher, a fitted re-rank store, index.json).
_RELINK_MAX = 64 << 20
#: `info()`'s label for entries without one.
NO_LABEL = "(no label)"


class CollectionError(ValueError):
    """A collection folder that is missing, damaged, of another format version, or failed to save."""


class RerankStoreError(ValueError):
    """The re-rank store cannot be fitted on (or encode) the features of an `add`: `spec`, the
    number of features `n` and their dimension `dim` say why to a caller that names its own option."""

    def __init__(self, message: str, spec: str, n: int, dim: int) -> None:
        super().__init__(message)
        self.spec, self.n, self.dim = spec, n, dim


# How ids are looked up among re-rank rows: (order, ids[order]) with `order` their argsort, or
# (None, ids) when they are ascending already (a base's, always), so nothing of size N is copied.
_IdOrder = tuple["np.ndarray | None", np.ndarray]


def _id_order(ids: np.ndarray) -> _IdOrder:
    """The lookup order of `ids` (int64, shape (N,)): computed once per part, O(N); a query then
    costs O(log N) per id, not a gather of all N ids (1.3 s a query at 10^8 before)."""
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return None, ids
    order = np.argsort(ids, kind="stable")
    return order, ids[order]


# An entry in memory before it is saved: (root id, key below the root, label, content digest).
_Record = tuple[int, str, "str | None", str]


class Collection:
    """Images made searchable: their codes in an index, their features and records beside.

    Build one with `Collection.create(backbone, hasher)` then `add`, or open a saved one with
    `Collection.open(path)`.
    """

    def __init__(
        self,
        backbone: Backbone,
        hasher: Hasher,
        index: Index,
        store_features: bool = True,
        stats: dict | None = None,
        int8_model: str | os.PathLike | None = None,
        model: TrainedModel | None = None,
        rerank_store: str | RerankStore = "full",
    ) -> None:
        self.backbone = backbone
        # The trained model whose backbone and hasher these are (None: a stock backbone and a hasher fitted here).
        self.model = model
        # The int8 ONNX model that computed the features (None: fp32), named `<feature cache key>.onnx`.
        self.int8_model = None if int8_model is None else Path(int8_model)
        self.hasher = hasher
        self.index = index
        self.store_features = store_features
        # How each entry's re-rank feature is kept (None: not kept); fitted on the first `add`.
        self.rerank_store: RerankStore | None = None
        if store_features:
            self.rerank_store = create_rerank_store(rerank_store) if isinstance(rerank_store, str) else rerank_store
        self.stats = dict(stats or {})
        #: The collection folder (None until saved or opened).
        self.path: Path | None = None
        self._feature_ids = np.zeros(0, np.int64)
        self._features = np.zeros((0, 0), np.float16)
        self._feature_order: _IdOrder | None = None  # _feature_ids' lookup order, rebuilt after a change
        self._db_path: Path | None = None
        # Segments (see the module docstring): the delta parts after the base, oldest first, by
        # name; their entries databases; their re-rank rows (ids, rows); the rows added since the
        # last save while segmented (ids, rows).
        self._deltas: list[str] = []
        self._db_deltas: list[Path] = []
        self._row_deltas: list[tuple[np.ndarray, np.ndarray]] = []
        self._row_tail: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros((0, 0), np.float16))
        self._row_orders: dict[int, _IdOrder] = {}
        # Entries and removals held by the deltas (for the compaction rule), and a compaction asked for.
        self._delta_size = 0
        self._compact_next = False
        # root id -> (path, inside): an absolute folder, or one relative to the collection folder.
        self._roots: dict[int, tuple[str, bool]] = {}
        self._roots_changed = False
        self._new: dict[int, _Record] = {}
        self._removed: set[int] = set()
        # The generation this object holds (set by open and save), and of each of its files the
        # identity (`file_identity`) and sha256 then: a save into the same folder hard-links the
        # files of the parts that did not change since (see `_write`).
        self._gen: Path | None = None
        self._gen_files: dict[str, tuple[tuple, str]] = {}
        # The open manifest of `_gen`, share-locked while this object holds it (see the module docstring).
        self._hold: _Hold | None = None
        #: The manifest of that generation ({} until saved or opened).
        self.manifest: dict = {}
        # Parts changed since that generation (everything, for a collection not yet saved).
        self._index_changed = True
        self._features_changed = True

    @classmethod
    def create(
        cls, backbone: Backbone, hasher: Hasher, index: str = "flat", index_options: dict | None = None, **kw
    ) -> Collection:
        """An empty collection around a fitted hasher (`index_options`: the back end's parameters, e.g.
        a Milvus ``uri``; `kw`: store_features, stats, int8_model, rerank_store).

        `rerank_store` is a spec of `hashsearch.index.rerank_store` ("full", the default: float16
        features; "pca-N", "int8", "pq-M": compact), fitted on the features of the first `add`.
        """
        hasher._check_fitted()
        return cls(backbone, hasher, create_index(index, n_bits=hasher.n_bits, **(index_options or {})), **kw)

    # -- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_bits(self) -> int:
        return self.hasher.n_bits

    @property
    def rerank_store_spec(self) -> str | None:
        """The re-rank store's spec ("full", "pca-128", ...), None if features are not stored."""
        return None if self.rerank_store is None else self.rerank_store.spec

    @property
    def model_id(self) -> str | None:
        """The id of the trained model that built this collection (`TrainedModel.id`), or None."""
        return None if self.model is None else self.model.id

    def use_model(self, model: TrainedModel) -> None:
        """Record that `model` built this collection: its backbone and hasher are the collection's.

        Raises
        ------
        ValueError
            If the collection's hasher is not the model's (build it with ``model.hasher``).
        """
        if self.hasher is not model.hasher or self.backbone.cache_key != model.backbone().cache_key:
            raise ValueError(
                "the collection's backbone and hasher must be the model's (model.backbone(), model.hasher)"
            )
        self.model = model

    def check_model(self, model_id: str | None, what: str = "these codes") -> None:
        """Refuse codes made by another model than this collection's.

        Raises
        ------
        CollectionError
            If `model_id` (None: the stock backbone with a hasher fitted at indexing) is not
            this collection's `model_id`; the message names both.
        """
        if model_id != self.model_id:

            def name(i):
                return f"model {i[:12]}" if i else "no trained model (a stock backbone and a hasher fitted at indexing)"

            raise CollectionError(
                f"{self.path or 'this collection'} holds codes of {name(self.model_id)}, but {what} come from "
                f"{name(model_id)}; codes of two models are not comparable: add with "
                f"{'--model of the same file' if self.model_id else 'no --model'}, or index into a new collection"
            )

    @property
    def dirty(self) -> bool:
        """True when there are changes that `save` has not written yet."""
        return bool(self._new or self._removed or self._roots_changed or self._db_path is None)

    @property
    def uploads_dir(self) -> Path:
        """`<collection folder>/uploads`: where the HTTP service keeps uploaded images.

        Raises
        ------
        CollectionError
            If the collection has no folder yet (save or open it first).
        """
        if self.path is None:
            raise CollectionError("this collection has no folder yet: save it before storing uploads")
        return self.path / UPLOADS

    @property
    def generation(self) -> str | None:
        """The name of the generation this object holds ("gen-000003"; None if never saved or opened)."""
        return None if self._gen is None else self._gen.name

    @staticmethod
    def live_generation(path: str | os.PathLike) -> str | None:
        """The generation the folder `path` names live now (its CURRENT file), None if none.

        A long-running reader compares it with its `generation`: when they differ, another process
        saved, and `Collection.open` gives the collection as it is now.
        """
        return _current_generation(Path(path))

    @staticmethod
    def remove_old_generations(path: str | os.PathLike) -> int:
        """Delete the generations of the folder `path` that are not live and that no open collection
        holds; returns how many. A save does this itself; a long-running reader calls it after it
        let go of one (the HTTP service, after following another process's save). Nothing is
        deleted while a save into the folder is running (it is left to that save).
        """
        root = Path(path)
        n = 0
        with _folder_lock(root, wait=False) as held:
            live = _current_generation(root) if held else None
            if live is not None:
                for old in root.glob("gen-*"):
                    if old.name != live and _remove_generation(old):
                        n += 1
        return n

    def close(self) -> None:
        """Release the generation this object holds, so that a save may delete it (see the module
        docstring). The object must not be used afterwards; dropping it releases it as well."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def decode(self, data: bytes, name: str = "<bytes>", max_pixels: int | None = None):
        """Decode a query (or an image to add) exactly as this collection's images were decoded when
        indexed (`hashsearch.pipeline.steps.decode_batch`): a JPEG at reduced scale (Pillow's draft
        mode) keeping both sides at least the backbone's input size, so its features are the ones
        the indexer would compute for the same file. Returns an RGB `PIL.Image.Image`.

        Raises
        ------
        DecodeError
            If `data` is not an image that can be decoded, or has more than `max_pixels` pixels
            (default `hashsearch.data.decode.DEFAULT_MAX_PIXELS`).
        """
        from hashsearch.data.decode import DEFAULT_MAX_PIXELS, decode_image

        side = self.backbone.preprocess.input_size
        return decode_image(data, name, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels, draft=(side, side))

    def extractor(self, cache_dir: str | os.PathLike | None = None):
        """The feature extractor for this collection's queries and additions: the one that computed
        its features. fp32: ONNX Runtime (exported to `cache_dir` on first use; PyTorch, with a
        warning, if onnxruntime cannot load), whose features equal PyTorch's within 1e-4. int8:
        the collection's own copy of its int8 model, so a query is quantized as the database was.
        """
        from hashsearch.backbones.runtime import OnnxExtractor, make_extractor

        extractor = make_extractor(self.backbone, "onnx", cache_dir=None if cache_dir is None else Path(cache_dir))
        if self.int8_model is not None:
            if not isinstance(extractor, OnnxExtractor):
                raise RuntimeError(
                    "this collection's features were computed by an int8 ONNX model, which needs "
                    "onnxruntime to extract the features of its queries and additions: pip install onnxruntime"
                )
            extractor.use_int8_model(self.int8_model, self.int8_model.stem)
        return extractor

    def add(
        self,
        features: np.ndarray,
        keys: Sequence[str],
        labels: Sequence[str | None] | None = None,
        digests: Sequence[str] | None = None,
        *,
        root: str | os.PathLike | None = None,
        model_id: str | None = ...,  # type: ignore[assignment]
    ) -> np.ndarray:
        """Encode `features` (float, (n, d)) and add them with their records; returns the new ids (int64, (n,)).

        Parameters
        ----------
        keys : sequence of str
            Where each image is, as a source names it: a path (relative to the working directory
            or absolute; any name the file system gives, surrogate escapes included) or
            ``"<archive path>::<member>"``. Paths are made absolute now and stored relative to `root`.
        labels, digests : sequence, optional
            Class labels (None: unlabelled) and content digests
            (`hashsearch.pipeline.cache.content_digest` of the file's bytes).
        root : path, optional
            The folder the keys are stored relative to: the source's folder, or the folder holding
            its archive or list file (default: the folder common to all keys). A root inside the
            collection folder (its `uploads_dir`) is stored relative to the collection.
        model_id : str or None, optional
            The id of the trained model whose backbone computed `features` (None: a stock
            backbone); when given it must be this collection's (`check_model`).

        Raises
        ------
        ValueError
            If the lengths of features, keys, labels and digests differ.
        RerankStoreError
            (a ValueError) If the re-rank store cannot encode the features (other dimensions;
            the first `add` fits a compact store on its features: pca-N needs N at most their
            number and dimension, pq-M at least 256 of them). Nothing is added then.
        CollectionError
            If `model_id` is given and is not this collection's.
        """
        if model_id is not ...:
            self.check_model(model_id)
        n = len(features)
        labels = [None] * n if labels is None else list(labels)
        digests = [""] * n if digests is None else list(digests)
        if not (len(keys) == len(labels) == len(digests) == n):
            raise ValueError(
                f"features ({n}), keys ({len(keys)}), labels ({len(labels)}) and digests "
                f"({len(digests)}) must have the same length"
            )
        files = [split_key(os.fspath(k)) for k in keys]
        absolute = [(os.path.abspath(f), m) for f, m in files]
        if root is None:
            root = os.path.commonpath([os.path.dirname(f) for f, _ in absolute]) if absolute else os.getcwd()
        root = os.path.abspath(root)
        root_id = self._root_id(root)
        rels = [_join_member(os.path.relpath(f, root), m) for f, m in absolute]
        codes = self.hasher.encode(features)
        rows = None
        if self.rerank_store is not None and n:
            # Fitted and encoded before anything changes: a store that cannot leaves the collection as it was.
            store = self.rerank_store
            try:
                if not store.is_fitted:
                    store.fit(features)
                rows = store.encode(features)
            except ValueError as e:
                dim = int(np.shape(features)[1]) if np.ndim(features) == 2 else 0
                raise RerankStoreError(str(e), store.spec, n, dim) from e
        ids = self._changing_index().add(codes)
        self._index_changed = self._index_changed or n > 0
        for i, rel, lab, d in zip(ids.tolist(), rels, labels, digests):
            self._new[i] = (root_id, rel, None if lab is None else str(lab), d)
        if rows is not None:
            self._features_changed = True
            if self._segmented():  # the saved rows stay as they are; these go to the next delta
                tail_ids, tail_rows = self._row_tail
                self._row_tail = (
                    np.concatenate([tail_ids, ids.astype(np.int64)]),
                    np.concatenate([tail_rows, rows]) if len(tail_rows) else rows,
                )
            else:
                self._feature_ids = np.concatenate([self._feature_ids, ids.astype(np.int64)])
                self._feature_order = None
                self._features = np.concatenate([self._features, rows]) if len(self._features) else rows
        return ids

    def _segmented(self) -> bool:
        """True when changes go to segments: an index back end whose files are immutable, in a
        collection that has a generation (see the module docstring)."""
        return self.index.name in _IMMUTABLE_INDEX_BACKENDS and self._gen is not None

    def _changing_index(self) -> Index:
        """The index to add to or remove from: segmented (the saved one untouched) when `_segmented`."""
        if self._segmented() and not isinstance(self.index, SegmentedIndex):
            self.index = SegmentedIndex([self.index])
        return self.index

    def compact(self) -> None:
        """Make the next `save` merge every segment into one (index, re-rank rows and entries
        written whole, removed entries dropped); a save compacts on its own when the segments
        pass their bounds (`MAX_DELTAS`, `MAX_DELTA_SHARE`)."""
        self._compact_next = True

    def _root_id(self, root: str) -> int:
        folder = None if self.path is None else os.path.abspath(self.path)
        inside = folder is not None and _is_under(root, folder)
        stored = (os.path.relpath(root, folder) if folder is not None and inside else root, inside)
        for i, r in self._roots.items():
            if r == stored:
                return i
        i = max(self._roots, default=-1) + 1
        self._roots[i] = stored
        self._roots_changed = True
        return i

    def _root_path(self, root_id: int) -> str:
        path, inside = self._roots[root_id]
        if inside:
            if self.path is None:  # pragma: no cover - roots inside a collection come after it has a folder
                raise CollectionError("this collection has no folder: its uploads cannot be located")
            return os.path.join(os.path.abspath(self.path), path)
        return path

    def remove(self, ids: Iterable[int]) -> int:
        """Remove entries by id; returns how many existed (ids that do not exist change nothing)."""
        found = np.unique(np.asarray(list(ids), np.int64))
        found = found[contains(self.index, found)]
        if not len(found):
            return 0
        n = self._changing_index().remove(found)
        self._index_changed = True
        for i in found.tolist():
            if self._new.pop(i, None) is None:
                self._removed.add(i)
        if self.store_features:
            if self._segmented():  # saved rows stay (the index's tombstones hide them); pending ones go
                tail_ids, tail_rows = self._row_tail
                keep = ~np.isin(tail_ids, found)
                self._row_tail = (tail_ids[keep], tail_rows[keep])
            else:
                keep = ~np.isin(self._feature_ids, found)
                self._feature_ids, self._features = self._feature_ids[keep], self._features[keep]
                self._feature_order = None
            self._features_changed = True
        return n

    def _stored(self, ids: list[int]) -> dict[int, _Record]:
        """Saved records of `ids` (those not removed since), from the live generation's database."""
        want = [i for i in ids if i not in self._new and i not in self._removed and i != MISSING_ID]
        stored: dict[int, _Record] = {}
        if want and self._db_path is not None:
            with self._db() as db:
                for start in range(0, len(want), 900):
                    chunk = want[start : start + 900]
                    rows = db.execute(
                        f"SELECT id, root, key, label, digest FROM entries WHERE id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                    stored.update((r[0], (r[1], os.fsdecode(r[2]), _text(r[3]), r[4])) for r in rows)
        return stored

    def entries(self, ids: Iterable[int]) -> list[dict | None]:
        """The record of each id (None for -1 or an unknown id).

        Each record is a dict: "id" (int); "key" (str: the file's path relative to its root, "/"
        separated, ``"a.tar::cat/1.jpg"`` for an archive member: the name to show); "label" (str
        or None); "digest" (str: content digest, "" if unknown); "path" (str: where the file is
        now on this machine, absolute; for this machine's use only).
        """
        ids = [int(i) for i in ids]
        stored = self._stored(ids)
        out: list[dict | None] = []
        for i in ids:
            rec = self._new.get(i) or stored.get(i)
            if rec is None:
                out.append(None)
                continue
            root_id, key, label, digest = rec
            out.append(
                {
                    "id": i,
                    "key": key,
                    "label": label,
                    "digest": digest,
                    "path": os.path.join(self._root_path(root_id), key),
                }
            )
        return out

    def read_image(self, image_id: int) -> bytes:
        """The bytes of an entry's image file (or archive member).

        Raises
        ------
        KeyError
            If no entry has this id.
        OSError
            If the file cannot be read (the message names the entry's key).
        """
        entry = self.entries([image_id])[0]
        if entry is None:
            raise KeyError(f"no entry with id {image_id}")
        try:
            return read_key(entry["path"])
        except OSError as e:
            raise OSError(
                f"the image of entry {image_id} ({entry['key']}) cannot be read: "
                f"{e.strerror or e}; if its folder moved, run `hashsearch relocate`"
            ) from None

    def ids_by_digest(self, digests: Iterable[str]) -> dict[str, int]:
        """For each given content digest held by the collection, the smallest live id with it."""
        wanted = {d for d in digests if d}
        found: dict[str, int] = {}
        for i, (_, _, _, d) in self._new.items():
            if d in wanted and (d not in found or i < found[d]):
                found[d] = i
        if self._db_path is not None and wanted:
            wanted_list = sorted(wanted)
            with self._db() as db:
                for start in range(0, len(wanted_list), 900):
                    chunk = wanted_list[start : start + 900]
                    rows = db.execute(
                        f"SELECT digest, id FROM entries WHERE digest IN ({','.join('?' * len(chunk))}) ORDER BY id",
                        chunk,
                    )
                    for d, i in rows:
                        if i not in self._removed and (d not in found or i < found[d]):
                            found[d] = i
        return found

    def relocate(self, old: str | os.PathLike, new: str | os.PathLike) -> int:
        """Point the entries whose files were under the folder `old` at the folder `new`; returns how many.

        For a collection whose image folder moved, ``relocate("/data/photos", "/mnt/photos")``, or one
        folder of it, ``relocate("/data/photos/daisy", "/mnt/daisy")``. Nothing is checked on disk;
        the change is written by the next `save`.
        """
        old, new = os.path.abspath(old), os.path.abspath(new)
        moved = []
        for i, (path, inside) in list(self._roots.items()):
            if not inside and _is_under(path, old):
                self._roots[i] = (os.path.join(new, os.path.relpath(path, old)) if path != old else new, False)
                moved.append(i)
        counts = self._root_counts()
        n = sum(counts.get(i, 0) for i in moved)
        # A folder below a root: its entries get a root of their own, their keys lose the folder.
        for i, (path, inside) in list(self._roots.items()):
            if not inside and i not in moved and _is_under(old, path) and old != path:
                n += self._move_below(i, os.path.relpath(old, path).replace(os.sep, "/") + "/", new)
        if n:
            self._roots_changed = True
        return n

    def _move_below(self, root_id: int, prefix: str, new: str) -> int:
        """Entries of `root_id` whose key starts with `prefix` move to the root `new`, keys shortened."""
        target = self._root_id(new)
        moving = {i: rec for i, rec in self._new.items() if rec[0] == root_id and rec[1].startswith(prefix)}
        if self._db_path is not None:
            raw = _blob(prefix)
            with self._db() as db:
                rows = db.execute(
                    "SELECT id, key, label, digest FROM entries WHERE root = ? AND substr(key, 1, ?) = ?",
                    (root_id, len(raw), raw),
                )
                moving.update(
                    (i, (root_id, os.fsdecode(k), _text(lab), d))
                    for i, k, lab, d in rows
                    if i not in self._removed and i not in self._new
                )
        for i, (_, key, label, digest) in moving.items():
            self._new[i] = (target, key[len(prefix) :], label, digest)
        return len(moving)

    def _root_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        if self._db_path is not None:
            with self._db() as db:
                counts = dict(db.execute("SELECT root, COUNT(*) FROM entries GROUP BY root"))
            for root_id, *_ in self._stored_replaced():
                counts[root_id] -= 1
        for root_id, *_ in self._new.values():
            counts[root_id] = counts.get(root_id, 0) + 1
        return counts

    def has_label(self, label: str | None) -> bool:
        """Whether an entry carries `label` (None or `NO_LABEL`, "(no label)": an unlabelled entry),
        changes not saved yet included. One pass over the saved entries (no index on labels): far
        less than a search of every entry."""
        if label == NO_LABEL:
            label = None
        if any(lab == label for _, _, lab, _ in self._new.values()):
            return True
        if self._db_path is None:
            return False
        with self._db() as db:
            if label is None:
                (saved,) = db.execute("SELECT COUNT(*) FROM entries WHERE label IS NULL").fetchone()
            else:  # stored as the file system's bytes; as text by an older hashsearch
                (saved,) = db.execute(
                    "SELECT COUNT(*) FROM entries WHERE label = ? OR label = ?", (_blob(label), label)
                ).fetchone()
        return saved > sum(lab == label for _, lab in self._stored_replaced())

    def _stored_replaced(self) -> Iterator[tuple[int, str | None]]:
        """(root, label) of the saved entries that the next save removes or rewrites (relocated)."""
        changed = sorted(self._removed | self._new.keys())
        if self._db_path is None:
            return
        with self._db() as db:
            for start in range(0, len(changed), 900):
                chunk = changed[start : start + 900]
                yield from (
                    (r, _text(lab))
                    for r, lab in db.execute(
                        f"SELECT root, label FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk
                    )
                )

    def sources(self) -> list[dict]:
        """The folders entries are stored relative to: [{"root": str, "count": int, "exists": bool}]."""
        counts = self._root_counts()
        out = []
        for i in sorted(self._roots):
            if counts.get(i, 0):
                path = self._root_path(i)
                out.append({"root": path, "count": counts[i], "exists": os.path.isdir(path)})
        return out

    def features_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored features of the given ids, (len(ids), d): float16 as stored with the "full" store;
        float32 reconstructions from a compact store (`RerankStore.reconstruct`: approximate).

        Raises
        ------
        ValueError
            If the collection stores no features (``store_features=False``, ``--no-features``).
        KeyError
            If an id has no stored feature.
        """
        rows = self._rows_of(ids)  # refuses a collection without a store
        store = self.rerank_store
        return rows if store is None or store.name == "full" else store.reconstruct(rows)

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The re-rank store's rows of the given ids."""
        if not self.store_features:
            raise ValueError(
                "this collection keeps no features (built with store_features=False, `hashsearch index "
                "--no-features`): re-ranking needs them"
            )
        if self._row_deltas or len(self._row_tail[0]):
            return self._rows_of_parts(np.asarray(ids, np.int64))
        if self._feature_order is None:
            self._feature_order = _id_order(self._feature_ids)
        order, sorted_ids = self._feature_order
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        if len(ids) and (len(sorted_ids) == 0 or not np.array_equal(sorted_ids[pos], ids)):
            raise KeyError("some ids have no stored features")
        return self._features[pos if order is None else order[pos]]

    def _row_parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The re-rank rows as (ids, rows) parts: the base, each delta, the rows not saved yet."""
        parts = [(self._feature_ids, self._features), *self._row_deltas]
        return [*parts, self._row_tail] if len(self._row_tail[0]) else parts

    def _rows_of_parts(self, ids: np.ndarray) -> np.ndarray:
        """`_rows_of` across segments: each part's ids are looked up in its own sorted order."""
        index = self.index
        if isinstance(index, SegmentedIndex) and index.is_removed(ids).any():
            raise KeyError("some ids have no stored features")
        parts = self._row_parts()
        out: np.ndarray | None = None
        found = np.zeros(len(ids), bool)
        for p, (pids, rows) in enumerate(parts):
            if not len(pids):
                continue
            if p == len(parts) - 1 and len(self._row_tail[0]):
                order, sorted_ids = _id_order(pids)  # not saved yet: not cached
            else:
                if p not in self._row_orders:
                    self._row_orders[p] = _id_order(pids)
                order, sorted_ids = self._row_orders[p]
            pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
            hit = (sorted_ids[pos] == ids) & ~found
            if out is None:
                out = np.zeros((len(ids), rows.shape[1]), rows.dtype)
            out[hit] = rows[pos[hit] if order is None else order[pos[hit]]]
            found |= hit
        if not len(ids):
            return parts[0][1][:0]
        if not found.all() or out is None:
            raise KeyError("some ids have no stored features")
        return out

    # -- search -------------------------------------------------------------------------
    def search(
        self,
        features: np.ndarray,
        k: int = 10,
        rerank: int | None = None,
        radius: int | None = None,
        ties: str = "features",
    ) -> SearchResult:
        """Neighbours of query features.

        Plain Hamming ranking by default. With `rerank=M`: coarse-to-fine search, candidates
        within Hamming `radius` (default 2), or the top M by Hamming distance when the radius
        finds fewer than M, re-ranked by Euclidean distance between features as the re-rank
        store keeps them (`rerank_store`: "full", the float16 features; "pca-N", distances in
        the PCA space; "int8", "pq-M", to the decoded features). With only `radius`: every
        entry within it, up to k, by (distance, id).

        `ties` orders entries at the same Hamming distance (without `rerank`): "features" (the
        default) by the Euclidean distance of their stored features to the query's, among the
        `TIE_POOL` nearest by Hamming distance (ties beyond them by id), where the collection
        stores features; "id" (and any collection without features) by id. Codes of a method
        that learns from clusters collide: on flowers12 indexed with bihalf-spectral, 53 daisies
        shared one 64-bit code and a query photo came 46th of them by id.
        """
        check_choice("ties", ties, ("features", "id"))
        codes = self.hasher.encode(features)
        if rerank:
            query, lookup = self._feature_lookup(features)
            return coarse_to_fine(
                self.index,
                codes,
                query,
                lookup,
                k=k,
                radius=2 if radius is None else radius,
                n_candidates=rerank,
            )
        by_features = ties == "features" and self.store_features and len(self.index) > 0
        want = max(k, TIE_POOL) if by_features else k
        if radius is not None:
            found = _truncate_range(self.index.range_search(codes, radius), want)
        else:
            found = self.index.search(codes, want)
        return self._break_ties(found, features, k) if by_features else found

    def _feature_lookup(self, features: np.ndarray):
        """(query vectors, ``lookup(ids) -> stored vectors``) compared by re-ranking and tie-breaking:
        as the re-rank store keeps them, or the raw features where no store is fitted (no features
        stored: the lookup says so; or nothing ever added)."""
        store = self.rerank_store
        if store is None or not store.is_fitted:
            return np.asarray(features, np.float32), self._rows_of

        def lookup(ids):
            return store.decode(self._rows_of(ids))

        return store.query(features), lookup

    def _break_ties(self, found: SearchResult, features: np.ndarray, k: int) -> SearchResult:
        """The first k of `found` (by Hamming distance) with equal distances ordered by the
        Euclidean distance of the stored features to the query's, then by id."""
        query, lookup = self._feature_lookup(features)
        dist = np.full((len(found.ids), k), found.distances.dtype.type(-1), found.distances.dtype)
        ids = np.full((len(found.ids), k), MISSING_ID, np.int64)
        for q in range(len(found.ids)):
            ok = found.ids[q] >= 0
            qi, qd = found.ids[q][ok], found.distances[q][ok]
            if not len(qi):
                continue
            rows = np.asarray(lookup(qi), np.float32)
            fd = ((rows - query[q]) ** 2).sum(axis=1)
            order = np.lexsort((qi, fd, qd))[:k]
            ids[q, : len(order)], dist[q, : len(order)] = qi[order], qd[order]
        return SearchResult(dist, ids)

    def search_records(
        self,
        features: np.ndarray,
        k: int = 10,
        *,
        rerank: int | None = None,
        radius: int | None = None,
        label: str | None = None,
        exclude: int | None = None,
    ) -> list[list[dict]]:
        """Neighbours of query features as records: what the CLI prints and the HTTP API answers.

        `search` with three additions: only entries labelled `label` (when given), found by
        fetching more candidates until k match or the collection is exhausted; the entry
        `exclude` left out (more like an indexed image: itself); and each hit joined with its
        record.

        Parameters
        ----------
        features : (n_queries, d) float array
        k, rerank, radius : as in `search`.
        label : str, optional
            Keep only entries with this label (`NO_LABEL`, "(no label)": the unlabelled ones).
        exclude : int, optional
            An id never returned.

        Returns
        -------
        list of lists of dict
            Per query, up to k hits ranked as `search` ranks them; each hit is the entry's record
            (see `entries`: id, key, label, digest, path) with "hamming" (int, the Hamming distance
            between the query's code and the entry's stored code) and, with `rerank`,
            "rerank_distance" (float, the Euclidean distance between features that ranked it, as
            the re-rank store keeps them: see `search`).

        Raises
        ------
        ValueError
            If k < 1, or radius is not in [0, n_bits].
        """
        check_int("k", k, low=1)
        check_int("radius", radius, low=0, high=self.n_bits, allow_none=True, note=f"n_bits={self.n_bits}")
        features = np.atleast_2d(np.asarray(features, np.float32))
        wanted = None if label == NO_LABEL else label  # as `info` names the unlabelled entries
        n = len(self)
        out = []
        in_use: bool | None = None  # whether an entry has the label, asked once when needed
        for q in range(len(features)):
            query = features[q : q + 1]
            want = k + (exclude is not None)
            fetch = want if label is None else min(n, max(want * 20, 200))
            while True:
                res = self.search(query, k=max(fetch, 1), rerank=rerank, radius=radius)
                found = res.ids[0] >= 0
                ids, dist = res.ids[0][found].tolist(), res.distances[0][found].tolist()
                rows = [
                    (i, d, e)
                    for i, d, e in zip(ids, dist, self.entries(ids))
                    if e is not None and i != exclude and (label is None or e["label"] == wanted)
                ]
                if len(rows) >= k or fetch >= n or len(ids) < fetch:
                    break
                if in_use is None:  # before fetching further: a label no entry has needs no wider search
                    in_use = self.has_label(wanted)
                if not in_use:
                    break
                fetch = min(n, fetch * 8)
            rows = rows[:k]
            if rerank and rows:
                # Re-ranked hits come with feature distances; their Hamming distance is that of the stored code.
                stored = self.index.get_codes(np.array([i for i, _, _ in rows], np.int64))
                hamming = hamming_distances(self.hasher.encode(query), stored)[0].tolist()
            else:
                hamming = [d for _, d, _ in rows]
            hits = []
            for (_i, d, e), h in zip(rows, hamming):
                hit = {**e, "hamming": int(h)}
                if rerank:
                    hit["rerank_distance"] = float(d)
                hits.append(hit)
            out.append(hits)
        return out

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a new generation under `path` and make it live atomically; returns its folder.

        Raises
        ------
        CollectionError
            If the save fails (disk full, permissions...), or another process saved into `path`
            since this object opened or saved it there (saving would drop that change): nothing
            changed on disk, and a collection that was opened from or saved to `path` is reset
            to what is there.
        """
        root = Path(path)
        previous = (self.path, self._roots)
        existed = root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            if self.path is None or os.path.abspath(self.path) != os.path.abspath(root):
                self._rebase_roots(root)
            return self._save(root)
        except Exception as e:
            self.path, self._roots = previous
            if not existed:
                with contextlib.suppress(OSError):
                    root.rmdir()  # made by this save, and empty again
            if (
                self.path is not None
                and os.path.abspath(self.path) == os.path.abspath(root)
                and _current_generation(root)
            ):
                self._reset_to(root)
                kept = "; this collection was reset to it"
            else:
                kept = ""
            raise CollectionError(
                f"saving {root} failed ({type(e).__name__}: {e}); nothing changed on disk{kept}"
            ) from e

    def _rebase_roots(self, root: Path) -> None:
        """Roots inside the new folder become relative to it, those inside the old one absolute."""
        roots = {i: (self._root_path(i), False) for i in self._roots}
        self.path = root
        for i, (p, _) in roots.items():
            if _is_under(p, os.path.abspath(root)):
                roots[i] = (os.path.relpath(p, os.path.abspath(root)), True)
        self._roots, self._roots_changed = roots, True

    def _save(self, root: Path) -> Path:
        with _folder_lock(root):  # one save at a time into a folder, whichever process
            held = self._gen is not None and self._gen.parent.resolve() == root.resolve()
            live = _current_generation(root)
            if held and live != self._gen.name:  # type: ignore[union-attr]
                raise CollectionError(
                    f"another process saved {live} since this collection read {self._gen.name} "  # type: ignore[union-attr]
                    "(e.g. `hashsearch add` or the HTTP service); saving would drop that change, so "
                    "nothing was written: open the collection again and redo this change"
                )
            return self._save_locked(root)

    def _save_locked(self, root: Path) -> Path:
        for stale in root.glob(".*.tmp-*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        # Past every generation folder, the live one or one a killed save left behind.
        gen = 1 + max([_generation_number(p.name) for p in root.glob("gen-*")], default=0)
        name = f"gen-{gen:06d}"
        tmp = root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            return self._write(root, tmp, gen)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # renamed into place on success

    def _write(self, root: Path, tmp: Path, gen: int) -> Path:
        """Write generation `gen` in the folder `tmp`, then make it live under `root`.

        A file of a part that did not change since the generation this object holds (`_gen`, in
        the same folder) is not written but hard-linked from it (`share_file`: a copy where links
        are refused), its sha256 taken from that generation's manifest: the index while no add or
        remove touched it (back ends whose files are never written after a save: flat, mih), the
        re-rank rows likewise, the entries database while nothing is pending, the model and int8
        model files. Small files written anyway (hasher, fitted re-rank store, index.json: their
        size does not grow with the collection) are replaced by a link when their content equals
        the previous generation's (`same_content`). Nothing writes into a generation's files
        after its save (indexes and features are memory-mapped read-only and copied on their
        first change; entries are read with SQLite's mode=ro), so a shared inode never changes
        under another generation; deleting an old generation removes names, and the data stays
        while a newer one links it. Only a save into the folder of `_gen` links: a save elsewhere
        writes every file.
        """
        name = f"gen-{gen:06d}"
        prev = self._gen if self._gen is not None and self._gen.parent.resolve() == root.resolve() else None
        shared: dict[str, str] = {}  # file (relative to the generation) -> "linked" / "copied"

        def share(rel: str) -> bool:
            if prev is None or rel not in self._gen_files:
                return False
            how = share_file(prev / rel, tmp / rel, self._gen_files[rel][0])
            if how is not None:
                shared[rel] = how
            return how is not None

        self.hasher.save(tmp / "hasher.npz")
        immutable_index = self.index.name in _IMMUTABLE_INDEX_BACKENDS
        store = self.rerank_store
        compact = store is not None and store.name != "full"
        if self.store_features and store is not None and compact and store.is_fitted:
            store.save(tmp / RERANK_STORE_FILE)
        after = None
        deltas: list[str] = []
        if self._segmented():
            deltas, after = self._write_segments(tmp, gen, share, shared)
        else:
            (tmp / "index").mkdir()
            index_files = sorted(r for r in self.manifest["files"] if r.startswith("index/")) if prev else []
            if not (immutable_index and not self._index_changed and index_files and all(map(share, index_files))):
                if [rel for rel in index_files if shared.pop(rel, None)]:  # one could not be linked: write them all
                    shutil.rmtree(tmp / "index")
                    (tmp / "index").mkdir()
                self.index.save(tmp / "index")
            if self.store_features:
                if self._features_changed or not (share("features.npy") and share("feature_ids.npy")):
                    for rel in ("features.npy", "feature_ids.npy"):
                        if shared.pop(rel, None):  # the other could not be linked: write both
                            (tmp / rel).unlink()
                    np.save(tmp / "features.npy", np.ascontiguousarray(self._features), allow_pickle=False)
                    np.save(tmp / "feature_ids.npy", self._feature_ids, allow_pickle=False)
            if self.dirty or not share("entries.sqlite"):
                self._write_entries(tmp / "entries.sqlite")
        if self.int8_model is not None:
            own = prev is not None and self.int8_model == prev / self.int8_model.name
            if not (own and share(self.int8_model.name)):
                shutil.copyfile(self.int8_model, tmp / self.int8_model.name)
        if self.model is not None:
            # A copy, not a reference: the collection then opens and extracts anywhere, like its int8 model.
            own = prev is not None and self.model.path == prev / MODEL_FILE
            if not (own and share(MODEL_FILE)):
                if self.model.path is not None and self.model.path.is_file():
                    shutil.copyfile(self.model.path, tmp / MODEL_FILE)
                else:
                    self.model.save(tmp / MODEL_FILE)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        if prev is not None:
            for p in files:
                rel = str(p.relative_to(tmp))
                if rel not in shared and (immutable_index or not rel.startswith("index/")):
                    self._relink_if_equal(prev, tmp, rel, shared)
        digests = {}
        for p in files:
            rel = str(p.relative_to(tmp))
            # A shared file keeps the digest its generation recorded: not read again, and a damaged one still shows.
            digests[rel] = self._gen_files[rel][1] if rel in shared else file_sha256(p)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": 4 if deltas else 3 if compact else 2,
            "generation": gen,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "count": len(self),
            "n_bits": self.n_bits,
            "backbone": {"name": self.backbone.name, **_backbone_params(self.backbone)},
            "backbone_config": self.backbone.config(),
            "hasher": {"method": self.hasher.name, "params": self.hasher.get_params()},
            "index": {"backend": self.index.name},
            "store_features": self.store_features,
            "rerank_store": self.rerank_store_spec,
            "int8_model": None if self.int8_model is None else self.int8_model.name,
            "model": None if self.model is None else {"id": self.model.id, "file": MODEL_FILE},
            "stats": self.stats,
            "files": digests,
        }
        if deltas:
            manifest["deltas"] = deltas
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for p in [*files, tmp / "manifest.json"]:
            if shared.get(str(p.relative_to(tmp))) != "linked":  # a link's data is on disk already
                fsync_path(p)
        for folder in [p for p in tmp.iterdir() if p.is_dir()]:
            fsync_path(folder)
        fsync_path(tmp)
        pointer = root / f".CURRENT.tmp-{os.getpid()}"
        try:
            os.replace(tmp, root / name)
            fsync_path(root)
            pointer.write_text(name + "\n")
            fsync_path(pointer)
            os.replace(pointer, root / "CURRENT")
        except BaseException:
            # Not live: take this attempt's files away again (a kill leaves them to the next save).
            if _current_generation(root) != name:
                shutil.rmtree(root / name, ignore_errors=True)
            pointer.unlink(missing_ok=True)
            raise
        # Live from here: the object follows the generation just written, whatever happens next.
        self.path = root
        self._db_path = root / name / "entries.sqlite"
        if self.int8_model is not None:
            self.int8_model = root / name / self.int8_model.name
        if self.model is not None:
            self.model.path = root / name / MODEL_FILE
        if after is not None:
            after(root / name)
        self._new.clear()
        self._removed.clear()
        self._roots_changed = False
        self.manifest = manifest
        self._held(root / name)
        try:
            fsync_path(root)
        except OSError as e:  # the switch is made; only its durability is in doubt
            warnings.warn(f"{root}: the new generation is live, but syncing the folder failed ({e})", stacklevel=2)
        # The previous generation, any a killed save left, and older ones a reader held until now;
        # not one that a reader (another process's open collection) still holds.
        for old in root.glob("gen-*"):
            if old.name != name:
                _remove_generation(old)
        return root / name

    def _write_segments(self, tmp: Path, gen: int, share, shared: dict[str, str]):
        """The index, re-rank rows and entries of a segmented collection (see the module docstring):
        the base and every delta linked (`share`) or, where that fails, written; what changed since
        written as one new delta; or, when the deltas pass their bounds (`_compaction_start`), the
        parts from one on merged and written as one. Returns (the new generation's delta names,
        a function that makes this object hold what was written once the generation is live).
        """
        index = self.index
        seg = index if isinstance(index, SegmentedIndex) else None
        segments = seg.segments if seg is not None else [index]
        row_parts = [(self._feature_ids, self._features), *self._row_deltas]
        db_paths = [self._db_path, *self._db_deltas]
        has_tail = len(self._row_tail[0]) > 0
        pending = bool(
            (seg is not None and (len(seg.tail) or len(seg.pending_removed)))
            or self._new
            or self._removed
            or self._roots_changed
            or has_tail
        )
        names = ["", *self._deltas]
        start = self._compaction_start(pending)
        if seg is None and (pending or start is not None):  # e.g. a relocate alone: an empty index segment
            self.index = seg = SegmentedIndex([index])
        # A new part's name: this generation's number, past any delta kept (saved into another folder).
        new = f"{max([gen, *(int(n) + 1 for n in self._deltas)]):06d}"
        keep = names if start is None else names[:start]
        for i, name in enumerate(keep):
            self._share_or_write_part(name, segments[i], row_parts[i], db_paths[i], tmp, share, shared)
        merged_index = merged_rows = None
        if start is None:
            out = keep + ([new] if pending else [])
            size = self._delta_size + len(self._new) + len(self._removed)
            if pending:
                assert seg is not None  # made above for every pending change
                index_dir, feats, feat_ids, entries = _part_files(new)
                (tmp / index_dir).mkdir()
                seg.tail.save(tmp / index_dir)
                if self.store_features:
                    ids, rows = self._row_tail if has_tail else (np.zeros(0, np.int64), self._features[:0])
                    np.save(tmp / feats, np.ascontiguousarray(rows), allow_pickle=False)
                    np.save(tmp / feat_ids, ids, allow_pickle=False)
                self._write_entry_delta(tmp / entries)
        else:
            assert seg is not None  # made above whenever a compaction starts
            name = "" if start == 0 else new
            out = [*keep, name]
            index_dir, feats, feat_ids, entries = _part_files(name)
            if start == 0 and len(segments) == 1 and not (len(seg.tail) or len(seg.removed)) and not has_tail:
                # Only the entries changed (a relocate): the index and rows are the base's, linked.
                merged_index = segments[0]
                self._share_or_write_part("", segments[0], row_parts[0], None, tmp, share, shared, entries=False)
            else:
                (tmp / index_dir).mkdir()
                merged_index = seg.merged(start)
                merged_index.save(tmp / index_dir)
            if self.store_features and merged_index is not segments[0]:
                parts = [*row_parts[start:], *([self._row_tail] if has_tail else [])]
                ids = np.concatenate([p[0] for p in parts])
                rows = np.concatenate([p[1] for p in parts if len(p[0])] or [self._features[:0]])
                if seg is not None and len(seg.removed):
                    live = ~np.isin(ids, seg.removed)
                    ids, rows = ids[live], rows[live]
                merged_rows = (ids, rows)
                np.save(tmp / feats, np.ascontiguousarray(rows), allow_pickle=False)
                np.save(tmp / feat_ids, ids, allow_pickle=False)
            base_removed = None
            if start > 0 and seg is not None:  # the removals the merged delta keeps: those of the base's entries
                base_removed = seg.removed[contains(segments[0], seg.removed)]
            size = self._write_entries_merged(tmp / entries, cast("list[Path]", db_paths[start:]), base_removed)

        def after(gen_dir: Path) -> None:
            if start is None:
                if pending:
                    assert seg is not None
                    seg.seal()
                    self._row_deltas.append(self._row_tail if has_tail else (np.zeros(0, np.int64), self._features[:0]))
            elif start == 0:
                assert merged_index is not None
                self.index = merged_index
                if merged_rows is not None:
                    self._feature_ids, self._features = merged_rows
                self._feature_order = None
                self._row_deltas = []
            else:
                assert seg is not None and merged_index is not None
                seg.compact(start, merged_index)
                self._row_deltas = [
                    *self._row_deltas[: start - 1],
                    merged_rows or (np.zeros(0, np.int64), self._features[:0]),
                ]
            self._row_tail = (np.zeros(0, np.int64), self._features[:0])
            self._row_orders = {}
            self._compact_next = False
            self._deltas = out[1:]
            self._db_deltas = [gen_dir / _part_files(n)[3] for n in self._deltas]
            self._delta_size = size if self._deltas else 0

        return out[1:], after

    def _compaction_start(self, pending: bool) -> int | None:
        """Which parts a save merges: None (none: the changes go to a new delta), 0 (all: one base)
        or 1 (the deltas into one). All when asked (`compact`), or when the deltas hold more than
        `MAX_DELTA_SHARE` of the collection's size in entries added, rewritten or removed; the
        deltas when there would be more than `MAX_DELTAS` of them. A save so writes bytes in
        proportion to what changed, and a merge costs what the merged parts hold."""
        if self._compact_next:
            return 0
        n_deltas = len(self._deltas) + pending
        if n_deltas == 0:
            return None
        held = self._delta_size + len(self._new) + len(self._removed)
        if held > MAX_DELTA_SHARE * max(len(self), 1):
            return 0
        if n_deltas > MAX_DELTAS:
            return 1
        return None

    def _share_or_write_part(self, name, segment, rows, db_path, tmp: Path, share, shared, entries=True) -> None:
        """Link one unchanged part (base: name "") into the new generation, or write it (its
        entries database too, unless `entries` is False)."""
        index_dir, feats, feat_ids, entries_file = _part_files(name)
        (tmp / index_dir).mkdir()
        index_files = sorted(r for r in self.manifest.get("files", {}) if r.startswith(index_dir + "/"))
        if not (index_files and all(map(share, index_files))):
            for rel in index_files:
                if shared.pop(rel, None):  # one could not be linked: write them all
                    (tmp / rel).unlink()
            segment.save(tmp / index_dir)
        if self.store_features and not (share(feats) and share(feat_ids)):
            for rel in (feats, feat_ids):
                if shared.pop(rel, None):
                    (tmp / rel).unlink()
            np.save(tmp / feats, np.ascontiguousarray(rows[1]), allow_pickle=False)
            np.save(tmp / feat_ids, rows[0], allow_pickle=False)
        if entries and not share(entries_file):
            shutil.copyfile(db_path, tmp / entries_file)

    def _write_entry_delta(self, dest: Path) -> None:
        """A delta's entries database: the records added or rewritten, the ids removed, all roots."""
        with contextlib.closing(sqlite3.connect(f"file:{_uri_path(dest)}", uri=True)) as db:
            db.executescript(_DELTA_SCHEMA)
            db.executemany("INSERT INTO removed VALUES (?)", [(i,) for i in sorted(self._removed)])
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                [(i, r, _blob(k), None if lab is None else _blob(lab), d) for i, (r, k, lab, d) in self._new.items()],
            )
            self._write_roots(db)
            db.commit()

    def _write_entries_merged(self, dest: Path, paths: list[Path], base_removed: np.ndarray | None) -> int:
        """One database of the live entries of `paths` (parts, oldest first) with the pending
        changes: a new base (`base_removed` None) or one delta removing `base_removed` from the base.
        Returns how many entries and removals it holds."""
        with contextlib.closing(sqlite3.connect(f"file:{_uri_path(dest)}", uri=True)) as db:
            db.executescript(_SCHEMA if base_removed is None else _DELTA_SCHEMA)
            schemas = []
            for i, p in enumerate(paths):
                db.execute(f"ATTACH DATABASE ? AS p{i}", (f"file:{_uri_path(p)}?mode=ro",))
                schemas.append(f"p{i}")
            db.execute(f"INSERT INTO main.entries SELECT * FROM ({_entries_view(schemas)}) ORDER BY id")
            db.commit()
            for i in range(len(paths)):
                db.execute(f"DETACH DATABASE p{i}")
            db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in self._removed])
            db.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                [(i, r, _blob(k), None if lab is None else _blob(lab), d) for i, (r, k, lab, d) in self._new.items()],
            )
            if base_removed is not None:
                db.executemany("INSERT INTO removed VALUES (?)", [(int(i),) for i in base_removed])
            self._write_roots(db)
            db.commit()
            (n,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        return n + (0 if base_removed is None else len(base_removed))

    def _write_roots(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM roots")
        db.executemany(
            "INSERT INTO roots VALUES (?, ?, ?)", [(i, _blob(p), int(inside)) for i, (p, inside) in self._roots.items()]
        )

    def _relink_if_equal(self, prev: Path, tmp: Path, rel: str, shared: dict[str, str]) -> None:
        """Replace the just written `tmp/rel` by a link to `prev/rel` when both hold the same data
        (`same_content`; only files up to `_RELINK_MAX` bytes are compared)."""
        known = self._gen_files.get(rel)
        new = tmp / rel
        size = new.stat().st_size
        if known is None or size > _RELINK_MAX:
            return
        try:
            if file_identity(prev / rel) != known[0] or not same_content(prev / rel, new):
                return
        except OSError:
            return
        link = new.with_name(f".{new.name}.link")
        try:
            os.link(prev / rel, link)
        except OSError as e:  # no hard links here: keep the file written
            log.debug("%s: the file system refused a hard link to %s (%s); keeping it as written", new, prev / rel, e)
            return
        if file_identity(link) != known[0]:  # replaced just before: keep ours
            os.unlink(link)
            return
        os.replace(link, new)
        log.debug("%s: written, equal to %s, replaced by a hard link to it", new, prev / rel)
        shared[rel] = "linked"

    def _held(self, gen: Path, hold: _Hold | None = None) -> None:
        """Record that this object now holds generation `gen`, as its files are (see `_write`), and
        share-lock it (`hold`: its manifest, opened and locked already), releasing the one held before."""
        old, self._hold = self._hold, hold if hold is not None else _hold_generation(gen)
        if old is not None:
            old.close()
        self._gen = gen
        self._gen_files = {}
        for rel, digest in self.manifest["files"].items():
            with contextlib.suppress(OSError):
                self._gen_files[rel] = (file_identity(gen / rel), digest)
        self._index_changed = self._features_changed = False

    def _write_entries(self, dest: Path) -> None:
        with contextlib.closing(sqlite3.connect(f"file:{_uri_path(dest)}", uri=True)) as db:
            if self._db_path is not None:
                with _read_db(self._db_path) as src:
                    src.backup(db)
            db.executescript(_SCHEMA)
            db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in self._removed])
            db.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                [(i, r, _blob(k), None if lab is None else _blob(lab), d) for i, (r, k, lab, d) in self._new.items()],
            )
            db.execute("DELETE FROM roots")
            db.executemany(
                "INSERT INTO roots VALUES (?, ?, ?)",
                [(i, _blob(p), int(inside)) for i, (p, inside) in self._roots.items()],
            )
            db.commit()

    def _db(self):
        """A read-only connection to the saved entries, base and deltas as one (see `_read_parts`)."""
        assert self._db_path is not None  # callers check
        return _read_parts([self._db_path, *self._db_deltas])

    def _reset_to(self, root: Path) -> None:
        """Make this object what the live generation under `root` holds (after a failed save)."""
        fresh = type(self).open(root, verify=False)
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def open(
        cls, path: str | os.PathLike, verify: bool = True, cache_dir: str | os.PathLike | None = None
    ) -> Collection:
        """Open a saved collection (memory-mapped); `verify` checks every file's sha256; a trained
        model's weights are unpacked into `cache_dir` (a command's --cache-dir; None: the default cache).

        Raises
        ------
        CollectionError
            If `path` is not a collection, is damaged, or is of another format version.
        """
        root = Path(path)
        if not root.exists():
            raise CollectionError(
                f"{root} does not exist; build a collection there with `hashsearch index FOLDER --out {root}`"
            )
        if not root.is_dir():
            raise CollectionError(
                f"{root} is a file, not a collection (a collection is the folder `hashsearch index --out` writes)"
            )
        for _ in range(20):
            current = _current_generation(root)
            if current is None:
                raise CollectionError(
                    f"{root} is not a hashsearch collection (no CURRENT file); build one with `hashsearch index`"
                )
            gen = root / current
            # Locked before it is read: a save in another process then leaves it in place.
            hold = _hold_generation(gen)
            if hold is None or _current_generation(root) == current:
                break
            hold.close()  # a save replaced it meanwhile (and may have deleted it): take the new one
        try:
            manifest = json.loads((gen / "manifest.json").read_text())
            version = manifest.get("version") if isinstance(manifest, dict) else None
            manifest = check_header(
                manifest, FORMAT, version if version in READ_VERSIONS else FORMAT_VERSION, gen / "manifest.json"
            )
        except OSError as e:
            raise CollectionError(
                f"{gen}/manifest.json is missing or unreadable ({e.strerror or e}); restore it from a backup or rebuild the index"
            ) from e
        except ValueError as e:
            raise CollectionError(
                f"{e}"
                if "format" in str(e)
                else f"{gen}/manifest.json is damaged ({e}); restore it from a backup or rebuild the index"
            ) from e
        if not {"files", "backbone", "hasher", "index", "store_features"} <= manifest.keys():
            raise CollectionError(
                f"{gen}/manifest.json is damaged (required fields missing); restore it from a backup or rebuild the index"
            )
        if verify:
            for rel, digest in manifest["files"].items():
                p = gen / rel
                if not p.is_file() or file_sha256(p) != digest:
                    raise CollectionError(
                        f"{p} is missing or damaged (checksum mismatch); restore it from a backup or rebuild the index"
                    )
        try:
            model = None
            if manifest.get("model") is not None:
                model = TrainedModel.load(gen / MODEL_FILE)
                if model.id != manifest["model"]["id"]:
                    raise ValueError(
                        f"{MODEL_FILE} is model {model.id[:12]}, the manifest names {manifest['model']['id'][:12]}"
                    )
                backbone = model.backbone(cache_dir)
            else:
                bb = manifest["backbone"]
                backbone = create_backbone(bb["name"], **{k: v for k, v in bb.items() if k != "name"})
            hasher = Hasher.load(gen / "hasher.npz")
            backend: type[Index] = index_backends.get(manifest["index"]["backend"])  # type: ignore[assignment]
            index = backend.load(gen / "index")
            int8 = manifest["int8_model"]
            if int8 is not None and (
                not isinstance(int8, str) or Path(int8).name != int8 or int8 not in manifest["files"]
            ):
                raise ValueError(f"int8_model {int8!r} is not one of the generation's files")
            self = cls(
                backbone,
                hasher,
                index,
                manifest["store_features"],
                manifest.get("stats"),
                int8_model=None if int8 is None else gen / int8,
                model=model,
                rerank_store=_open_rerank_store(gen, manifest),
            )
            if self.store_features:
                self._features = np.load(gen / "features.npy", mmap_mode="r", allow_pickle=False)
                self._feature_ids = np.load(gen / "feature_ids.npy", mmap_mode="r", allow_pickle=False)
                self._check_rows()
            self._open_deltas(gen, manifest, backend)
            with self._db() if self._deltas else _read_db(gen / "entries.sqlite") as db:
                self._roots = {
                    i: (os.fsdecode(p), bool(inside))
                    for i, p, inside in db.execute("SELECT id, path, inside FROM roots")
                }
        except ConnectionError:
            raise  # an index server that cannot be reached, or refuses the credentials: nothing is damaged
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, sqlite3.Error) as e:
            # Reached with verify=False (or a manifest damaged consistently with its checksums).
            raise CollectionError(
                f"{gen} cannot be loaded ({type(e).__name__}: {e}); restore it from a backup or rebuild the index"
            ) from e
        self.path = root
        self.manifest = manifest
        self._held(gen, hold)
        return self

    def _open_deltas(self, gen: Path, manifest: dict, backend: type[Index]) -> None:
        """Load the manifest's deltas (format 4): their index segments, re-rank rows, entries
        databases, and the removals they record (the index's tombstones)."""
        self._db_path = gen / "entries.sqlite"
        deltas = manifest.get("deltas", [])
        if not isinstance(deltas, list) or not all(isinstance(d, str) and d.isdigit() for d in deltas):
            raise ValueError(f"the manifest's deltas {deltas!r} are not a list of part numbers")
        if deltas and manifest["version"] < 4:
            raise ValueError(f"a version {manifest['version']} manifest cannot name deltas")
        if len(deltas) > MAX_DELTAS:
            raise ValueError(f"the manifest names {len(deltas)} deltas; at most {MAX_DELTAS} are read")
        if not deltas:
            return
        segments, removed, size = [self.index], [], 0
        for d in deltas:
            index_dir, feats, feat_ids, entries = _part_files(d)
            meta = json.loads((gen / index_dir / "index.json").read_text())
            kind = meta.get("backend") if isinstance(meta, dict) else None
            if kind not in (backend.name, "flat"):
                raise ValueError(f"{index_dir} holds an index of back end {kind!r}, not {backend.name!r} or 'flat'")
            part: type[Index] = index_backends.get(kind)  # type: ignore[assignment]
            segments.append(part.load(gen / index_dir))
            if self.store_features:
                rows = np.load(gen / feats, mmap_mode="r", allow_pickle=False)
                ids = np.load(gen / feat_ids, mmap_mode="r", allow_pickle=False)
                base = self._features
                if len(ids) != len(rows) or rows.ndim != 2 or (len(rows) and len(base) and rows.dtype != base.dtype):
                    raise ValueError(f"{feats} holds {rows.dtype} rows of shape {rows.shape} for {len(ids)} ids")
                self._row_deltas.append((ids, rows))
            self._db_deltas.append(gen / entries)
            with _read_db(gen / entries) as db:
                removed.append(np.array([i for (i,) in db.execute("SELECT id FROM removed")], np.int64))
                (n,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
            size += n + len(removed[-1])
        self._deltas = list(deltas)
        self._delta_size = size
        self.index = SegmentedIndex(segments, np.concatenate(removed))

    def _check_rows(self) -> None:
        """After loading: the rows must be the store's (a "full" store learns its width from them)."""
        store, rows = self.rerank_store, self._features
        if store is None:
            return
        if len(self._feature_ids) != len(rows):
            raise ValueError(f"features.npy has {len(rows)} rows for {len(self._feature_ids)} ids")
        if not store.is_fitted:
            if store.name == "full" and rows.ndim == 2 and rows.shape[1]:
                self.rerank_store = store = FullStore.of_dim(rows.shape[1])
            elif len(rows):
                raise ValueError(f"features.npy has rows but re-rank store {store.spec!r} has no {RERANK_STORE_FILE}")
            else:
                return
        if rows.ndim != 2 or rows.dtype != store.row_dtype or (len(rows) and rows.shape[1] != store.row_width):
            raise ValueError(
                f"features.npy holds {rows.dtype} rows of shape {rows.shape}; re-rank store {store.spec!r} "
                f"keeps {store.row_dtype} rows of {store.row_width}"
            )

    def info(self) -> dict:
        """A summary for `hashsearch info` and GET /stats; unlabelled entries count under `NO_LABEL`."""
        labels: dict[str, int] = {}
        if self._db_path is not None:
            with self._db() as db:
                for lab, n in db.execute("SELECT label, COUNT(*) FROM entries GROUP BY label"):
                    labels[_label_name(_text(lab))] = n
            for _, lab in self._stored_replaced():
                labels[_label_name(lab)] -= 1
        for _, _, lab, _ in self._new.values():
            labels[_label_name(lab)] = labels.get(_label_name(lab), 0) + 1
        return {
            "count": len(self),
            "n_bits": self.n_bits,
            "method": self.hasher.name,
            "hasher_params": self.hasher.get_params(),
            "backbone": self.backbone.name,
            "input_size": self.backbone.preprocess.input_size,
            "index": self.index.name,
            "encoding": "int8" if self.int8_model is not None else "fp32",
            "model": None if self.model is None else {"id": self.model.id, **_model_summary(self.model)},
            "store_features": self.store_features,
            "rerank_store": self.rerank_store_spec,
            "labels": {k: v for k, v in sorted(labels.items()) if v},
            "sources": self.sources(),
            "stats": self.stats,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS roots (id INTEGER PRIMARY KEY, path BLOB NOT NULL, inside INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, root INTEGER NOT NULL, key BLOB NOT NULL, label BLOB, digest TEXT);
CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest);
"""


_DELTA_SCHEMA = _SCHEMA + "CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY);\n"
_COLUMNS = "id, root, key, label, digest"


def _entries_view(schemas: list[str]) -> str:
    """SQL of the live entries of database parts (schema names, oldest first): each part's rows
    whose id no later part rewrote (its `entries`) or removed (its `removed`)."""
    arms = []
    for i, s in enumerate(schemas):
        later = schemas[i + 1 :]
        shadow = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {t}.entries x WHERE x.id = e.id) "
            f"AND NOT EXISTS (SELECT 1 FROM {t}.removed r WHERE r.id = e.id)"
            for t in later
        )
        arms.append(f"SELECT {_COLUMNS} FROM {s}.entries e" + (f" WHERE {shadow}" if shadow else ""))
    return " UNION ALL ".join(arms)


@contextlib.contextmanager
def _read_parts(paths: list[Path]) -> Iterator[sqlite3.Connection]:
    """A read-only connection whose `entries` and `roots` are those of a base database and its
    deltas (`paths`, oldest first): temporary views over the attached files (a temporary name
    comes before the main database's), so every query reads the live state as from one file."""
    if len(paths) == 1:
        with _read_db(paths[0]) as db:
            yield db
        return
    with _read_db(paths[0]) as db:
        schemas = ["main"]
        for i, p in enumerate(paths[1:]):
            db.execute(f"ATTACH DATABASE ? AS d{i}", (f"file:{_uri_path(p)}?mode=ro",))
            schemas.append(f"d{i}")
        db.execute(f"CREATE TEMP VIEW entries AS {_entries_view(schemas)}")
        db.execute(f"CREATE TEMP VIEW roots AS SELECT id, path, inside FROM {schemas[-1]}.roots")
        yield db


@contextlib.contextmanager
def _read_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an entries database, closed on exit (sqlite3's own `with` only commits)."""
    db = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(os.fsencode(os.path.abspath(path)))


def _blob(text: str) -> bytes:
    """A key or label as the file system's bytes (surrogate escapes back to the bytes they stand for)."""
    return os.fsencode(text)


def _text(value: bytes | str | None) -> str | None:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _label_name(label: str | None) -> str:
    return NO_LABEL if label is None else label


def _join_member(rel: str, member: str | None) -> str:
    rel = rel.replace(os.sep, "/")
    return rel if member is None else f"{rel}::{member}"


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _part_files(name: str) -> tuple[str, str, str, str]:
    """(index folder, re-rank rows, their ids, entries database) of a part: the base (name "") or a delta."""
    if not name:
        return "index", "features.npy", "feature_ids.npy", "entries.sqlite"
    return f"index.{name}", f"features.{name}.npy", f"feature_ids.{name}.npy", f"entries.{name}.sqlite"


def _generation_number(name: str) -> int:
    try:
        return int(name.split("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _backbone_params(backbone: Backbone) -> dict:
    params = {"input_size": backbone.preprocess.input_size}
    weights = getattr(backbone, "weights", None)
    if weights:
        params["weights"] = weights
    return params


def _model_summary(model: TrainedModel) -> dict:
    r = model.record
    return {k: r.get(k) for k in ("method", "mode", "val_map", "created_at")}


#: `Collection.search`'s pool for ordering Hamming ties by feature distance: the nearest this many
#: by Hamming distance (the re-rank's default pool, `hashsearch search --rerank`, is 200 too).
TIE_POOL = 200


def _truncate_range(result, k: int) -> SearchResult:
    nq = len(result)
    ids = np.full((nq, k), MISSING_ID, np.int64)
    dist = np.full((nq, k), -1, np.int32)
    for q in range(nq):
        d, i = result.query(q)
        m = min(k, len(i))
        ids[q, :m], dist[q, :m] = i[:m], d[:m]
    return SearchResult(dist, ids)


def _open_rerank_store(gen: Path, manifest: dict) -> str | RerankStore:
    """The re-rank store a manifest names: fitted from its file, or a spec still to fit. A
    collection saved before the stores (no "rerank_store") kept whole features: "full"."""
    spec = manifest.get("rerank_store") or "full"
    if spec != "full" and manifest["version"] < 3:
        raise ValueError(f"a version {manifest['version']} manifest cannot name re-rank store {spec!r}")
    if RERANK_STORE_FILE not in manifest["files"]:
        return spec
    store = RerankStore.load(gen / RERANK_STORE_FILE)
    if store.spec != spec:
        raise ValueError(f"{RERANK_STORE_FILE} is store {store.spec!r}, the manifest names {spec!r}")
    return store


class _Hold:
    """A share-locked open manifest (a file descriptor): the lock lasts until `close`, or until the
    object is dropped (no ResourceWarning: dropping an open collection is how a reader lets go)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _hold_generation(gen: Path) -> _Hold | None:
    """Generation `gen`'s manifest, opened and share-locked (None if it cannot be opened): while
    it stays open, `_remove_generation` leaves the generation alone, in any process."""
    try:
        fd = os.open(gen / "manifest.json", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: held, not locked
            fcntl.flock(fd, fcntl.LOCK_SH)
    return _Hold(fd)


def _remove_generation(gen: Path) -> bool:
    """Delete an old generation unless an open collection holds it (`_hold_generation`); False
    when one does (a later save deletes it)."""
    try:
        f = open(gen / "manifest.json", "rb")
    except OSError:  # no manifest: nobody can hold it (a save killed before writing one)
        shutil.rmtree(gen, ignore_errors=True)
        return True
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.debug("%s is held by a reader; a later save deletes it", gen)
                return False
            except OSError:
                pass
        shutil.rmtree(gen, ignore_errors=True)  # under the lock: an open taking it now sees it gone
    return True


@contextlib.contextmanager
def _folder_lock(root: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on the collection folder (the folder itself, no lock file): one save at a
    time. Yields whether it is held: with `wait` False, False at once when a save holds it (or
    where there are no locks)."""
    fd, held = None, False
    if fcntl is not None:
        try:
            fd = os.open(root, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError:  # BlockingIOError: a save is running; else a file system without locks
            pass
    try:
        yield held
    finally:
        if fd is not None:
            os.close(fd)


def _current_generation(root: Path) -> str | None:
    try:
        name = (root / "CURRENT").read_text().strip()
    except (OSError, UnicodeDecodeError):  # a damaged CURRENT reads as "no collection"
        return None
    return name if name.startswith("gen-") else None
