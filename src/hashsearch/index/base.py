"""The one interface every index back end implements."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from hashsearch.registry import Registry
from hashsearch.types import Codes, RangeResult, SearchResult
from hashsearch.validation import check_int

index_backends: Registry = Registry("index back end", builtins="hashsearch.index")

#: Class decorator: register an Index subclass under a name (also sets `cls.name`).
register_index = index_backends.register
#: Names of all registered index back ends.
list_indexes = index_backends.names


def create_index(name: str, n_bits: int, **params: Any) -> Index:
    """Build an empty index back end, e.g. ``create_index("flat", n_bits=64)``.

    A faiss factory string may follow ``faiss:``, e.g. ``create_index("faiss:BHNSW32", n_bits=64)``
    builds the "faiss" back end with ``factory="BHNSW32"``.
    """
    if isinstance(name, str) and name.startswith("faiss:") and name not in index_backends:
        if "factory" in params:
            raise ValueError(f"give the faiss factory once: either in the name ({name!r}) or as factory=, not both")
        return index_backends.create("faiss", n_bits=n_bits, factory=name[len("faiss:") :], **params)
    return index_backends.create(name, n_bits=n_bits, **params)


def read_index_meta(directory, backend: str, fmt: str, version: int) -> dict:
    """`directory`/index.json as a dict, or a ValueError unless it is `backend`'s `fmt` `version`."""
    import json
    from pathlib import Path

    from hashsearch.fileio import check_header

    directory = Path(directory)
    try:
        meta = json.loads((directory / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}/index.json is missing or not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("backend") != backend:
        got = meta.get("backend") if isinstance(meta, dict) else meta
        raise ValueError(
            f"{directory} holds an index of back end {got!r}, not {backend!r}; load it with that back end's class"
        )
    check_header(meta, fmt, version, directory / "index.json")
    return meta


class Index:
    """A set of (id, packed code) entries searched by Hamming distance.

    Contract, shared by every back end (and checked by tests/index/test_contract.py):

    - ids are non-negative int64, unique within the index; `add` without ids assigns
      consecutive ids after the largest ever used.
    - `search` returns a SearchResult of shape (n_queries, k) sorted by (distance, id);
      slots beyond the number of entries hold id -1 and distance -1.
    - `range_search` returns every entry within `radius` (inclusive), sorted by (distance, id).
    - exact back ends (`exact = True`) return exactly the brute-force answer, ties included.
      `exact` is a class attribute, or an instance attribute where it depends on parameters
      (the faiss back end: exact for "BFlat" only).
    - `save(directory)` writes plain files into an existing directory; `load(directory)`
      reads them back (memory-mapped where possible).
    """

    name: ClassVar[str] = "?"
    exact: bool = True  # a class attribute, or set per instance (see above)

    def __init__(self, n_bits: int) -> None:
        if not isinstance(n_bits, (int, np.integer)) or n_bits < 1:
            raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
        self.n_bits = int(n_bits)

    def add(self, codes: Codes, ids: np.ndarray | None = None) -> np.ndarray:
        """Add entries; returns their ids."""
        raise NotImplementedError

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id; unknown ids are ignored. Returns how many were removed."""
        raise NotImplementedError

    def search(self, queries: Codes, k: int) -> SearchResult:
        """The k nearest entries of each query by Hamming distance."""
        raise NotImplementedError

    def range_search(self, queries: Codes, radius: int) -> RangeResult:
        """All entries within Hamming distance `radius` of each query."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def ids(self) -> np.ndarray:
        """Ids of the entries, in storage order."""
        raise NotImplementedError

    def get_codes(self, ids: np.ndarray) -> Codes:
        """Codes of the given ids (KeyError for an unknown id)."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Index:
        raise NotImplementedError

    # -- shared argument checks ---------------------------------------------------------
    def _check_codes(self, codes: Codes, what: str = "codes") -> None:
        if not isinstance(codes, Codes):
            raise TypeError(f"{what} must be hashsearch.types.Codes, got {type(codes).__name__}")
        if codes.n_bits != self.n_bits:
            raise ValueError(f"{what} have {codes.n_bits} bits but this index holds {self.n_bits}-bit codes")

    @staticmethod
    def _check_k(k: int) -> int:
        return check_int("k", k, low=1)


class MirroredIndex(Index):
    """Base of the back ends that drive an outside engine (faiss, Milvus) and keep a "flat" mirror
    of their entries in `_store`: the mirror answers the count, the ids and the codes by id."""

    _store: Index

    def __len__(self) -> int:
        return len(self._store)

    @property
    def ids(self) -> np.ndarray:
        return self._store.ids

    def get_codes(self, ids: np.ndarray) -> Codes:
        return self._store.get_codes(ids)
