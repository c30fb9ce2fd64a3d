"""Index back ends behind one interface; importing this package registers the built-in ones.

Optional back ends with heavy dependencies (faiss, pymilvus) import them inside their own
module only, so this package imports fast without them.
"""

from hashsearch.index import faiss_backend as _faiss_backend  # noqa: F401  (registers "faiss"; imports faiss lazily)
from hashsearch.index import flat as _flat  # noqa: F401  (registers "flat")
from hashsearch.index import mih as _mih  # noqa: F401  (registers "mih")
from hashsearch.index import milvus_backend as _milvus_backend  # noqa: F401  (registers "milvus"; imports pymilvus lazily)
from hashsearch.index.base import Index, create_index, index_backends, list_indexes, register_index
from hashsearch.index.flat import FlatIndex
from hashsearch.index.mih import MIHIndex

__all__ = ["Index", "FlatIndex", "MIHIndex", "create_index", "index_backends", "list_indexes", "register_index"]
