"""Index back ends behind one interface; importing this package registers the built-in ones.

Optional back ends with heavy dependencies (faiss, pymilvus) import them inside their own
module only, so this package imports fast without them.
"""

from hashsearch.index import flat as _flat  # noqa: F401  (registers "flat")
from hashsearch.index.base import Index, create_index, index_backends, list_indexes, register_index
from hashsearch.index.flat import FlatIndex

__all__ = ["Index", "FlatIndex", "create_index", "index_backends", "list_indexes", "register_index"]
