"""Where hashsearch keeps files of its own: the cache folder for features, ONNX exports,
trained weights and unpacked datasets."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The folder for hashsearch's caches: $HASHSEARCH_CACHE, else ~/.cache/hashsearch.

    The folder is not created here; whoever writes into it does.
    """
    env = os.environ.get("HASHSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hashsearch"
