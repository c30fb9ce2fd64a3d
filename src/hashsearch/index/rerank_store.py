"""Compact stores of the features that coarse-to-fine search re-ranks by, chosen at index time.

A collection keeps, beside each entry's code, the backbone feature its candidates are re-ranked
by (`hashsearch.index.coarse_to_fine`). Kept whole (1280 float16 values, 2,560 bytes an
image) that is 256 GB at 10^8 images, so a store encodes each feature compactly:

=============  ==========================================  ===============================
spec           stored per vector (d = feature dimension)   distances computed between
=============  ==========================================  ===============================
``full``       d float16 (2 d bytes)                       the query and the stored feature
``pca-N``      N float16 (2 N bytes): PCA to N dimensions  the query and the vector, both projected
``int8``       d uint8 (d bytes): per-dimension scalar     the query and the decoded feature
               quantisation over the training range
``pq-M``       M bytes: faiss product quantiser, M         the query and the decoded feature
               sub-vectors of 256 centroids each (d % M == 0)
=============  ==========================================  ===============================

Every store has the same interface: ``fit(features)`` learns its parameters (none for
``full``), ``encode(features)`` gives the stored rows, ``decode(rows)`` the float32 vectors the
re-ranking compares with ``query(features)``, ``reconstruct(rows)`` approximations of the
features themselves (d float32 values; for what needs a feature rather than a distance: hashing
a stored image again, cosine similarity). ``save``/``load`` write one .npz file (no pickle)
with a format header. A collection picks its store with ``hashsearch index --rerank-store SPEC``.

Examples
--------
>>> import numpy as np
>>> X = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)
>>> store = create_rerank_store("pca-16").fit(X)
>>> rows = store.encode(X[:3])
>>> rows.dtype, rows.shape, store.decode(rows).shape, store.query(X[:1]).shape
(dtype('float16'), (3, 16), (3, 16), (1, 16))
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from hashsearch.fileio import check_header
from hashsearch.registry import Registry

FORMAT = "hashsearch-rerank-store"
FORMAT_VERSION = 1

rerank_stores: Registry = Registry("re-rank store")
register_rerank_store = rerank_stores.register

#: Features below which faiss warns that k-means of 256 centroids is poorly fitted (39 a centroid).
_PQ_GOOD_FIT = 39 * 256

_SPEC = re.compile(r"^(full|int8|pca-(\d+)|pq-(\d+))$")


def list_rerank_stores() -> list[str]:
    """The spec forms accepted by `create_rerank_store`."""
    return ["full", "int8", "pca-N", "pq-M"]


def create_rerank_store(spec: str) -> RerankStore:
    """An unfitted store from its spec: "full", "int8", "pca-N" (e.g. "pca-128") or "pq-M" (e.g. "pq-64").

    Raises ValueError naming the spec and the accepted forms.
    """
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(
            f"re-rank store {spec!r} is not one of {', '.join(list_rerank_stores())} "
            "(N, M positive integers, e.g. pca-128 or pq-64)"
        )
    if m.group(2):
        return rerank_stores.create("pca", n_components=int(m.group(2)))
    if m.group(3):
        return rerank_stores.create("pq", n_subquantizers=int(m.group(3)))
    return rerank_stores.create(spec)


def _as_features(features, what: str = "features", dim: int | None = None) -> np.ndarray:
    X = np.asarray(features)
    if X.ndim != 2 or X.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be a 2-d float array (n, d), got {X.dtype} of shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{what} have {X.shape[1]} dimensions but the store was fitted on {dim}")
    X = X.astype(np.float32, copy=False)
    if X.size and not np.isfinite(X).all():
        raise ValueError(f"{what} hold NaN or infinite values; re-ranking needs finite features")
    return X


class RerankStore:
    """Base of every store: `fit`, `encode`, `decode`, `query`, `save`, `load` (see the module)."""

    name: ClassVar[str] = "?"
    #: Learned arrays saved by `save` (attributes ending in `_`).
    _state: ClassVar[tuple[str, ...]] = ()

    dim_: int

    @property
    def spec(self) -> str:
        """The spec that recreates this store, e.g. "pca-128"."""
        return self.name

    def __repr__(self) -> str:
        return f"RerankStore({self.spec!r})"

    def fit(self, features: np.ndarray) -> RerankStore:
        """Learn the store's parameters from (n, d) features; returns self."""
        X = _as_features(features)
        if len(X) == 0:
            raise ValueError("features is empty: a re-rank store needs at least one feature to fit")
        self._fit(X)
        self.dim_ = X.shape[1]
        return self

    def _fit(self, X: np.ndarray) -> None:
        pass

    @property
    def is_fitted(self) -> bool:
        """True once `fit` (or `load`) has given the store its parameters."""
        return hasattr(self, "dim_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"re-rank store {self.spec!r} is not fitted; call fit(features) first")

    @property
    def row_dtype(self) -> np.dtype:
        """dtype of the rows `encode` returns."""
        raise NotImplementedError

    @property
    def row_width(self) -> int:
        """Values per stored row."""
        raise NotImplementedError

    @property
    def bytes_per_vector(self) -> int:
        """Bytes one stored feature takes."""
        return self.row_width * np.dtype(self.row_dtype).itemsize

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Stored rows (n, row_width) of `row_dtype` for (n, d) features."""
        self._check_fitted()
        X = _as_features(features, dim=self.dim_)
        return self._encode(X)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors (n, d') that re-ranking compares with `query` (d' = N for pca-N, else d)."""
        self._check_fitted()
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.row_width:
            raise ValueError(f"rows must have shape (n, {self.row_width}) for store {self.spec!r}, got {rows.shape}")
        return self._decode(rows)

    def query(self, features: np.ndarray) -> np.ndarray:
        """Query features (n, d) as float32 vectors (n, d') comparable with `decode`'s."""
        self._check_fitted()
        return _as_features(features, "query features", dim=self.dim_)

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """float32 approximations (n, d) of the features `rows` were encoded from (`decode`'s
        vectors, mapped back to the feature space where they are not in it: pca-N)."""
        return self.decode(rows)

    # -- persistence --------------------------------------------------------------------
    def _params(self) -> dict:
        return {}

    def save(self, path: str | os.PathLike) -> None:
        """Write the store's spec and learned arrays to `path` (.npz, no pickle), atomically."""
        self._check_fitted()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "spec": self.spec, "dim": int(self.dim_)}
        arrays = {f"state.{k}": getattr(self, k) for k in self._state}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike) -> RerankStore:
        """Read a store written by `save`; a damaged or foreign file raises ValueError."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["__meta__"]).decode())
                arrays = {k[6:]: z[k] for k in z.files if k.startswith("state.")}
        except Exception as e:  # OSError, ValueError, KeyError, zipfile.BadZipFile
            raise ValueError(f"{path} is not a readable hashsearch re-rank store file: {e}") from e
        check_header(meta, FORMAT, FORMAT_VERSION, path)
        store = create_rerank_store(meta.get("spec"))
        missing = set(store._state) - set(arrays)
        if missing or not isinstance(meta.get("dim"), int):
            raise ValueError(f"{path} is damaged: missing {sorted(missing) or 'dim'}")
        for k in store._state:
            setattr(store, k, arrays[k])
        store.dim_ = meta["dim"]
        store._after_load()
        return store

    def _after_load(self) -> None:
        pass


@register_rerank_store("full")
class FullStore(RerankStore):
    """The features themselves as float16 (what collections stored before the compact stores)."""

    row_dtype = np.dtype(np.float16)

    @property
    def row_width(self) -> int:
        return self.dim_

    @classmethod
    def of_dim(cls, dim: int) -> FullStore:
        """A fitted store of `dim`-dimensional features (full learns nothing else)."""
        store = cls()
        store.dim_ = int(dim)
        return store

    def _encode(self, X):
        return X.astype(np.float16)

    def _decode(self, rows):
        return rows.astype(np.float32)


@register_rerank_store("pca")
class PCAStore(RerankStore):
    """PCA to `n_components` dimensions, stored as float16; distances in the PCA space."""

    row_dtype = np.dtype(np.float16)
    _state = ("mean_", "components_")

    def __init__(self, n_components: int) -> None:
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"pca-N needs N >= 1, got {n_components!r}")
        self.n_components = n_components

    @property
    def spec(self) -> str:
        return f"pca-{self.n_components}"

    @property
    def row_width(self) -> int:
        return self.n_components

    def _fit(self, X):
        n, d = X.shape
        if self.n_components > min(n, d):
            raise ValueError(
                f"pca-{self.n_components} needs N <= min(features, dimensions) = {min(n, d)}; choose a smaller N"
            )
        mean = X.mean(0, dtype=np.float64)
        # Covariance eigenvectors: d x d, cheap for backbone widths and any number of rows.
        cov = np.zeros((d, d), np.float64)
        for a in range(0, n, 65536):
            B = X[a : a + 65536].astype(np.float64) - mean
            cov += B.T @ B
        w, v = np.linalg.eigh(cov)
        self.mean_ = mean.astype(np.float32)
        self.components_ = np.ascontiguousarray(v[:, ::-1][:, : self.n_components]).astype(np.float32)

    def _project(self, X):
        return (X - self.mean_) @ self.components_

    def _encode(self, X):
        return self._project(X).astype(np.float16)

    def _decode(self, rows):
        return rows.astype(np.float32)

    def query(self, features):
        return self._project(super().query(features))

    def reconstruct(self, rows):
        return self.decode(rows) @ self.components_.T + self.mean_


@register_rerank_store("int8")
class Int8Store(RerankStore):
    """Per-dimension scalar quantisation to 256 levels over the training range (values outside
    it are clipped); decoded to the levels' centres."""

    row_dtype = np.dtype(np.uint8)
    _state = ("low_", "step_")

    @property
    def row_width(self) -> int:
        return self.dim_

    def _fit(self, X):
        low, high = X.min(0), X.max(0)
        self.low_ = low.astype(np.float32)
        self.step_ = np.maximum((high - low) / 256, np.float32(1e-12)).astype(np.float32)

    def _encode(self, X):
        q = np.floor((X - self.low_) / self.step_)
        return np.clip(q, 0, 255).astype(np.uint8)

    def _decode(self, rows):
        return self.low_ + (rows.astype(np.float32) + 0.5) * self.step_


@register_rerank_store("pq")
class PQStore(RerankStore):
    """faiss product quantiser: `n_subquantizers` sub-vectors of d / M dimensions, 8 bits each."""

    row_dtype = np.dtype(np.uint8)
    _state = ("faiss_index_",)

    def __init__(self, n_subquantizers: int) -> None:
        if not isinstance(n_subquantizers, int) or n_subquantizers < 1:
            raise ValueError(f"pq-M needs M >= 1, got {n_subquantizers!r}")
        self.n_subquantizers = n_subquantizers

    @property
    def spec(self) -> str:
        return f"pq-{self.n_subquantizers}"

    @property
    def row_width(self) -> int:
        return self.n_subquantizers

    def _fit(self, X):
        import faiss

        n, d = X.shape
        if d % self.n_subquantizers:
            raise ValueError(
                f"pq-{self.n_subquantizers} needs M to divide the feature dimension {d}; "
                f"choose a divisor (e.g. {', '.join(str(m) for m in (16, 32, 64, 128) if d % m == 0) or 1})"
            )
        if n < 256:
            raise ValueError(f"pq-{self.n_subquantizers} needs at least 256 features to fit its codebooks, got {n}")
        index = faiss.IndexPQ(d, self.n_subquantizers, 8)
        if n < _PQ_GOOD_FIT:
            warnings.warn(
                f"pq-{self.n_subquantizers} fitted on {n:,} features; its k-means codebooks want "
                f"{_PQ_GOOD_FIT:,} or more (faiss's advice), so re-ranking may lose more than the "
                "docs/scale.md figures: on a small collection int8 or pca-N keeps closer to full",
                stacklevel=3,
            )
        # One warning here instead of faiss's own, printed once per sub-quantiser (the check is all this sets).
        index.pq.cp.min_points_per_centroid = 1
        index.train(np.ascontiguousarray(X))
        self._index = index
        self.faiss_index_ = faiss.serialize_index(index)

    def _after_load(self):
        import faiss

        try:
            self._index = faiss.deserialize_index(np.ascontiguousarray(self.faiss_index_, np.uint8))
        except RuntimeError as e:
            raise ValueError(f"the pq store's faiss codebooks are damaged: {e}") from None
        if self._index.d != self.dim_ or self._index.sa_code_size() != self.n_subquantizers:
            raise ValueError("the pq store's faiss codebooks do not match its spec; the file is damaged")

    def _encode(self, X):
        return self._index.sa_encode(np.ascontiguousarray(X))

    def _decode(self, rows):
        return self._index.sa_decode(np.ascontiguousarray(rows, np.uint8))
