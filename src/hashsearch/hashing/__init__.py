"""Hashers: one interface (fit / encode / save / load), one registry."""

# Importing the modules registers the built-in hashers.
from hashsearch.hashing import (  # noqa: F401
    classic,
    deep,
    itq,
    lsh,
    pca,
    ritq,
)
from hashsearch.hashing.base import (
    Hasher,
    create_hasher,
    hashers,
    list_hashers,
    register_hasher,
)
from hashsearch.validation import NotFittedError

__all__ = ["Hasher", "NotFittedError", "create_hasher", "hashers", "list_hashers", "register_hasher"]
