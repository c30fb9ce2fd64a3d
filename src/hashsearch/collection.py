"""A searchable collection: backbone + hasher + index + stored features + entry records.

On disk a collection is a folder (by convention named `*.hsx`) of immutable generations::

    photos.hsx/
      CURRENT                  names the live generation, e.g. "gen-000003"
      gen-000003/
        manifest.json          format, version, parameters, and the sha256 of every file below
        hasher.npz             the fitted hasher (no pickle)
        index/                 the index back end's own files (codes, ids)
        features.npy           float16 backbone features for re-ranking, rows in `feature_ids.npy` order
        feature_ids.npy
        entries.sqlite         id -> source key (path), label, content digest
        <key>.onnx             only if built with int8: the int8 model that computed the features

A save writes a new generation beside the old one, fsyncs it, and only then replaces CURRENT
(an atomic rename), so a crash during a save leaves the previous generation live and intact.
Loading checks the format version and every checksum; a damaged file is an error, never a
wrong answer.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hashsearch.backbones import Backbone, create_backbone
from hashsearch.fileio import file_sha256, fsync_path
from hashsearch.hashing import Hasher
from hashsearch.index import Index, create_index, index_backends
from hashsearch.index.coarse_to_fine import coarse_to_fine
from hashsearch.types import MISSING_ID, Codes, SearchResult

FORMAT = "hashsearch-collection"
FORMAT_VERSION = 1


class CollectionError(ValueError):
    """A collection folder that is missing, damaged, or of another format version."""


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
    ) -> None:
        self.backbone = backbone
        # The int8 ONNX model that computed the features (None: fp32), named `<feature cache key>.onnx`.
        self.int8_model = None if int8_model is None else Path(int8_model)
        self.hasher = hasher
        self.index = index
        self.store_features = store_features
        self.stats = dict(stats or {})
        self._feature_ids = np.zeros(0, np.int64)
        self._features = np.zeros((0, 0), np.float16)
        self._feature_order: np.ndarray | None = None  # argsort of _feature_ids, rebuilt after a change
        self._db_path: Path | None = None
        self._new: dict[int, tuple[str, str | None, str]] = {}
        self._removed: set[int] = set()

    @classmethod
    def create(cls, backbone: Backbone, hasher: Hasher, index: str = "flat", **kw) -> "Collection":
        """An empty collection around a fitted hasher (`kw`: store_features, stats, int8_model)."""
        hasher._check_fitted()
        return cls(backbone, hasher, create_index(index, n_bits=hasher.n_bits), **kw)

    # -- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_bits(self) -> int:
        return self.hasher.n_bits

    def encoder(self, cache_dir: str | os.PathLike | None = None):
        """The encoder for this collection's queries and additions: the one that computed its
        features. fp32: ONNX Runtime (exported to `cache_dir` on first use; PyTorch, with a
        warning, if onnxruntime cannot load), whose features equal PyTorch's within 1e-4. int8:
        the collection's own copy of its int8 model, so a query is quantized as the database was.
        """
        from hashsearch.backbones.runtime import OnnxEncoder, make_encoder

        encoder = make_encoder(self.backbone, "onnx", cache_dir=cache_dir)
        if self.int8_model is not None:
            if not isinstance(encoder, OnnxEncoder):
                raise RuntimeError(
                    "this collection's features were computed by an int8 ONNX model, which needs "
                    "onnxruntime to encode its queries and additions: pip install onnxruntime"
                )
            encoder.use_int8_model(self.int8_model, self.int8_model.stem)
        return encoder

    def add(
        self,
        features: np.ndarray,
        keys: Sequence[str],
        labels: Sequence[str | None] | None = None,
        digests: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Encode `features` and add them with their source keys and labels; returns the new ids."""
        n = len(features)
        labels = [None] * n if labels is None else list(labels)
        digests = [""] * n if digests is None else list(digests)
        if not (len(keys) == len(labels) == len(digests) == n):
            raise ValueError(
                f"features ({n}), keys ({len(keys)}), labels ({len(labels)}) and digests "
                f"({len(digests)}) must have the same length"
            )
        ids = self.index.add(self.hasher.encode(features))
        for i, k, lab, d in zip(ids.tolist(), keys, labels, digests):
            self._new[i] = (str(k), None if lab is None else str(lab), d)
        if self.store_features:
            self._feature_ids = np.concatenate([self._feature_ids, ids.astype(np.int64)])
            self._feature_order = None
            new = np.asarray(features, np.float16)
            self._features = np.concatenate([self._features, new]) if len(self._features) else new
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Remove entries by id; returns how many existed."""
        ids = np.asarray(list(ids), np.int64)
        n = self.index.remove(ids)
        for i in ids.tolist():
            if self._new.pop(i, None) is None:
                self._removed.add(i)
        if self.store_features and len(ids):
            keep = ~np.isin(self._feature_ids, ids)
            self._feature_ids, self._features = self._feature_ids[keep], self._features[keep]
            self._feature_order = None
        return n

    def entries(self, ids: Iterable[int]) -> list[dict | None]:
        """{"id", "key", "label"} for each id (None for -1 or an unknown id)."""
        ids = [int(i) for i in ids]
        stored: dict[int, tuple] = {}
        want = [i for i in ids if i not in self._new and i not in self._removed and i != MISSING_ID]
        if want and self._db_path is not None:
            with sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True) as db:
                for start in range(0, len(want), 900):
                    chunk = want[start : start + 900]
                    rows = db.execute(
                        f"SELECT id, key, label, digest FROM entries WHERE id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                    stored.update((r[0], r[1:]) for r in rows)
        out = []
        for i in ids:
            rec = self._new.get(i) or stored.get(i)
            out.append(None if rec is None else {"id": i, "key": rec[0], "label": rec[1]})
        return out

    def features_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored features (float16) of the given ids, for re-ranking."""
        if not self.store_features:
            raise ValueError("this collection was built with store_features=False: re-ranking needs features")
        if self._feature_order is None:
            self._feature_order = np.argsort(self._feature_ids, kind="stable")
        order = self._feature_order
        sorted_ids = self._feature_ids[order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        if len(ids) and (len(sorted_ids) == 0 or not np.array_equal(sorted_ids[pos], ids)):
            raise KeyError("some ids have no stored features")
        return self._features[order[pos]]

    # -- search -------------------------------------------------------------------------
    def search(
        self,
        features: np.ndarray,
        k: int = 10,
        rerank: int | None = None,
        radius: int | None = None,
    ) -> SearchResult:
        """Neighbours of query features.

        Plain Hamming ranking by default. With `rerank=M`: coarse-to-fine search, candidates
        within Hamming `radius` (default 2), or the top M by Hamming distance when the radius
        finds fewer than M, re-ranked by Euclidean distance between features. With only
        `radius`: every entry within it, up to k, by (distance, id).
        """
        codes = self.hasher.encode(features)
        if rerank:
            return coarse_to_fine(
                self.index, codes, np.asarray(features, np.float32), self.features_of,
                k=k, radius=2 if radius is None else radius, n_candidates=rerank,
            )
        if radius is not None:
            return _truncate_range(self.index.range_search(codes, radius), k)
        return self.index.search(codes, k)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a new generation under `path` and make it live atomically."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        current = _current_generation(root)
        gen = int(current.split("-")[1]) + 1 if current else 1
        name = f"gen-{gen:06d}"
        for stale in root.glob(".*.tmp-*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        self.hasher.save(tmp / "hasher.npz")
        (tmp / "index").mkdir()
        self.index.save(tmp / "index")
        if self.store_features:
            np.save(tmp / "features.npy", np.ascontiguousarray(self._features, np.float16), allow_pickle=False)
            np.save(tmp / "feature_ids.npy", self._feature_ids, allow_pickle=False)
        self._write_entries(tmp / "entries.sqlite")
        if self.int8_model is not None:
            shutil.copyfile(self.int8_model, tmp / self.int8_model.name)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generation": gen,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "count": len(self),
            "n_bits": self.n_bits,
            "backbone": {"name": self.backbone.name, **_backbone_params(self.backbone)},
            "backbone_config": self.backbone.config(),
            "hasher": {"method": self.hasher.name, "params": self.hasher.get_params()},
            "index": {"backend": self.index.name},
            "store_features": self.store_features,
            "int8_model": None if self.int8_model is None else self.int8_model.name,
            "stats": self.stats,
            "files": {str(p.relative_to(tmp)): file_sha256(p) for p in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for p in [*files, tmp / "manifest.json"]:
            fsync_path(p)
        os.replace(tmp, root / name)
        fsync_path(root)
        pointer = root / f".CURRENT.tmp-{os.getpid()}"
        pointer.write_text(name + "\n")
        fsync_path(pointer)
        os.replace(pointer, root / "CURRENT")
        fsync_path(root)
        for old in root.glob("gen-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        # From now on, read records from the generation just written.
        self._db_path = root / name / "entries.sqlite"
        if self.int8_model is not None:
            self.int8_model = root / name / self.int8_model.name
        self._new.clear()
        self._removed.clear()
        return root / name

    def _write_entries(self, dest: Path) -> None:
        db = sqlite3.connect(dest)
        if self._db_path is not None:
            with sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True) as src:
                src.backup(db)
        db.execute("CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, key TEXT NOT NULL, label TEXT, digest TEXT)")
        db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in self._removed])
        db.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
            [(i, k, lab, d) for i, (k, lab, d) in self._new.items()],
        )
        db.commit()
        db.close()

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Collection":
        """Open a saved collection (memory-mapped); `verify` checks every file's sha256."""
        root = Path(path)
        current = _current_generation(root)
        if current is None:
            raise CollectionError(f"{root} is not a hashsearch collection (no CURRENT file); build one with `hashsearch index`")
        gen = root / current
        try:
            manifest = json.loads((gen / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise CollectionError(f"{gen}/manifest.json is missing or damaged: {e}") from e
        if not isinstance(manifest, dict) or not {"files", "backbone", "hasher", "index", "store_features"} <= manifest.keys():
            raise CollectionError(f"{gen}/manifest.json is damaged (required fields missing); restore it from a backup or rebuild the index")
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise CollectionError(
                f"{root} has format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                f"this hashsearch reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        if verify:
            for rel, digest in manifest["files"].items():
                p = gen / rel
                if not p.is_file() or file_sha256(p) != digest:
                    raise CollectionError(f"{p} is missing or damaged (checksum mismatch); restore it from a backup or rebuild the index")
        try:
            bb = manifest["backbone"]
            backbone = create_backbone(bb["name"], **{k: v for k, v in bb.items() if k != "name"})
            hasher = Hasher.load(gen / "hasher.npz")
            index = index_backends.get(manifest["index"]["backend"]).load(gen / "index")
            int8 = manifest.get("int8_model")  # absent in collections saved before int8 was kept
            if int8 is not None and (not isinstance(int8, str) or Path(int8).name != int8 or int8 not in manifest["files"]):
                raise ValueError(f"int8_model {int8!r} is not one of the generation's files")
            self = cls(backbone, hasher, index, manifest["store_features"], manifest.get("stats"),
                       int8_model=None if int8 is None else gen / int8)
            if self.store_features:
                self._features = np.load(gen / "features.npy", mmap_mode="r", allow_pickle=False)
                self._feature_ids = np.load(gen / "feature_ids.npy", allow_pickle=False)
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
            # Reached with verify=False (or a manifest damaged consistently with its checksums).
            raise CollectionError(f"{gen} cannot be loaded ({type(e).__name__}: {e}); restore it from a backup or rebuild the index") from e
        self._db_path = gen / "entries.sqlite"
        self.manifest = manifest
        return self

    def info(self) -> dict:
        """A summary for `hashsearch info` and GET /stats."""
        labels: dict[str, int] = {}
        if self._db_path is not None:
            with sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True) as db:
                labels = {str(lab): n for lab, n in db.execute("SELECT label, COUNT(*) FROM entries GROUP BY label")}
        for _, lab, _ in self._new.values():
            labels[str(lab)] = labels.get(str(lab), 0) + 1
        return {
            "count": len(self),
            "n_bits": self.n_bits,
            "method": self.hasher.name,
            "hasher_params": self.hasher.get_params(),
            "backbone": self.backbone.name,
            "input_size": self.backbone.preprocess.input_size,
            "index": self.index.name,
            "encoding": "int8" if self.int8_model is not None else "fp32",
            "store_features": self.store_features,
            "labels": labels,
            "stats": self.stats,
        }


def _backbone_params(backbone: Backbone) -> dict:
    params = {"input_size": backbone.preprocess.input_size}
    if getattr(backbone, "weights", None):
        params["weights"] = backbone.weights
    return params


def _truncate_range(result, k: int) -> SearchResult:
    nq = len(result)
    ids = np.full((nq, k), MISSING_ID, np.int64)
    dist = np.full((nq, k), -1, np.int32)
    for q in range(nq):
        d, i = result.query(q)
        m = min(k, len(i))
        ids[q, :m], dist[q, :m] = i[:m], d[:m]
    return SearchResult(dist, ids)


def _current_generation(root: Path) -> str | None:
    try:
        name = (root / "CURRENT").read_text().strip()
    except (OSError, UnicodeDecodeError):  # a damaged CURRENT reads as "no collection"
        return None
    return name if name.startswith("gen-") else None
