"""The one interface every index back end implements."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from hashsearch.registry import Registry
from hashsearch.types import Codes, RangeResult, SearchResult

index_backends: Registry = Registry("index back end", builtins="hashsearch.index")

#: Class decorator: register an Index subclass under a name (also sets `cls.name`).
register_index = index_backends.register
#: Names of all registered index back ends.
list_indexes = index_backends.names


def create_index(name: str, n_bits: int, **params: Any) -> "Index":
    """Build an empty index back end, e.g. ``create_index("flat", n_bits=64)``."""
    return index_backends.create(name, n_bits=n_bits, **params)


class Index:
    """A set of (id, packed code) entries searched by Hamming distance.

    Contract, shared by every back end (and checked by tests/index/test_contract.py):

    - ids are non-negative int64, unique within the index; `add` without ids assigns
      consecutive ids after the largest ever used.
    - `search` returns a SearchResult of shape (n_queries, k) sorted by (distance, id);
      slots beyond the number of entries hold id -1 and distance -1.
    - `range_search` returns every entry within `radius` (inclusive), sorted by (distance, id).
    - exact back ends (`exact = True`) return exactly the brute-force answer, ties included.
    - `save(directory)` writes plain files into an existing directory; `load(directory)`
      reads them back (memory-mapped where possible).
    """

    name: ClassVar[str] = "?"
    exact: ClassVar[bool] = True

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
    def load(cls, directory: str | os.PathLike) -> "Index":
        raise NotImplementedError

    # -- shared argument checks ---------------------------------------------------------
    def _check_codes(self, codes: Codes, what: str = "codes") -> None:
        if not isinstance(codes, Codes):
            raise TypeError(f"{what} must be hashsearch.types.Codes, got {type(codes).__name__}")
        if codes.n_bits != self.n_bits:
            raise ValueError(f"{what} have {codes.n_bits} bits but this index holds {self.n_bits}-bit codes")

    @staticmethod
    def _check_k(k: int) -> int:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)
