"""Deep hashers: heads and losses (registries), ONE training loop, one composed class and its presets.

Importing this package registers the deep hashers ("deep", the presets dlbhc, dpsh, dsh, dfeh,
hashnet, csq, and dhfi) without importing torch; `heads`, `losses`, `trainer` and `endtoend`
import torch and are loaded when a deep hasher trains.
"""

from hashsearch.hashing.deep.base import DeepHasher
from hashsearch.hashing.deep.fusion import DHFI
from hashsearch.hashing.deep.presets import CSQ, DFEH, DLBHC, DPSH, DSH, HashNet, Preset, register_preset

__all__ = ["DeepHasher", "Preset", "register_preset", "DLBHC", "DPSH", "DSH", "DFEH", "HashNet", "CSQ", "DHFI"]
