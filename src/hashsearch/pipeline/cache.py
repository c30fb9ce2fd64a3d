"""The feature cache on disk (the pipeline's steps 3 and 6), keyed by file content and extractor.

One SQLite file per backbone key (name, input size, weights digest) under the cache folder;
rows map the BLAKE2b digest of an image file's bytes to its float32 feature vector. A second
run over the same images computes no features, whatever the files are called or where they
lie, and an interrupted run resumes where it stopped (each batch is committed as it is made).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np


def content_digest(data: bytes) -> str:
    """The cache key of one file's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class FeatureCache:
    """Feature vectors of one backbone configuration, stored by content digest.

    Parameters
    ----------
    directory : path
        The cache folder (created if missing).
    backbone_key : str
        `FeatureExtractor.cache_key`; features of different keys never mix.
    dim : int
        Feature dimension; a stored vector of another size is an error.
    """

    def __init__(self, directory: str | Path, backbone_key: str, dim: int) -> None:
        self.path = Path(directory) / "features" / f"{backbone_key}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (digest TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, digests: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `digests` (missing ones are absent from the result)."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 900):  # SQLite's bound-parameter limit
            chunk = digests[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for digest, blob in self._db.execute(f"SELECT digest, vec FROM features WHERE digest IN ({marks})", chunk):
                vec = np.frombuffer(blob, np.float32)
                if vec.size == self.dim:
                    found[digest] = vec
        return found

    def put_many(self, digests: list[str], vectors: np.ndarray) -> None:
        """Store vectors (one row per digest) and commit."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        self._db.executemany(
            "INSERT OR REPLACE INTO features VALUES (?, ?)",
            [(d, v.tobytes()) for d, v in zip(digests, vectors)],
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def close(self) -> None:
        self._db.close()
