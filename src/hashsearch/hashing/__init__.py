"""Hashers: one interface (fit / encode / save / load), one registry."""

from hashsearch.hashing.base import (
    Hasher,
    create_hasher,
    hashers,
    list_hashers,
    register_hasher,
)
from hashsearch.validation import NotFittedError

# Importing the modules registers the built-in hashers.
from hashsearch.hashing import lsh, pca, itq, ritq, classic  # noqa: E402,F401
from hashsearch.hashing import deep  # noqa: E402,F401

__all__ = ["Hasher", "NotFittedError", "create_hasher", "hashers", "list_hashers", "register_hasher"]
