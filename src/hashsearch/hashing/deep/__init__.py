"""Deep hashers: heads and losses (registries), ONE training loop, and the methods built from them.

Importing this package registers the deep hashers without importing torch; `heads`, `losses`
and `trainer` import torch and are loaded when a deep hasher is fitted.
"""

from hashsearch.hashing.deep.base import DeepHasher
from hashsearch.hashing.deep.dlbhc import DLBHC
from hashsearch.hashing.deep.pairwise import CSQ, DFEH, DPSH, DSH, HashNet
from hashsearch.hashing.deep.fusion import DHFI

__all__ = ["DeepHasher", "DLBHC", "DPSH", "DSH", "DFEH", "HashNet", "CSQ", "DHFI"]
