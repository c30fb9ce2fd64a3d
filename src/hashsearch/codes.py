"""Bit packing and Hamming-distance kernels over packed codes."""

from __future__ import annotations

import numpy as np

from hashsearch.types import Codes

# Hamming distances are computed in blocks of queries so a (block, n) int matrix stays small.
_BLOCK_BYTES = 64 << 20


def pack_bits(bits: np.ndarray) -> Codes:
    """Pack a (n, n_bits) array of 0/1 values (any integer or bool dtype) into Codes."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"bits must be a 2-d (n, n_bits) array, got shape {bits.shape}")
    if bits.size and not np.isin(bits, (0, 1)).all():
        raise ValueError("bits must hold only 0 and 1; threshold real values before packing")
    return Codes(np.packbits(bits.astype(np.uint8), axis=1), bits.shape[1])


def unpack_bits(codes: Codes) -> np.ndarray:
    """Unpack Codes to a (n, n_bits) uint8 array of 0/1."""
    return np.unpackbits(codes.data, axis=1, count=codes.n_bits)


def _as_words(data: np.ndarray) -> np.ndarray:
    """View packed rows as uint64 words (zero-padding rows to a multiple of 8 bytes)."""
    n, n_bytes = data.shape
    pad = (-n_bytes) % 8
    if pad:
        data = np.concatenate([data, np.zeros((n, pad), np.uint8)], axis=1)
    return np.ascontiguousarray(data).view(np.uint64)


def hamming_distances(queries: Codes, database: Codes) -> np.ndarray:
    """All pairwise Hamming distances, shape (n_queries, n_database), dtype int32."""
    if queries.n_bits != database.n_bits:
        raise ValueError(
            f"queries have {queries.n_bits} bits but the database has {database.n_bits}"
        )
    q = _as_words(queries.data)
    d = _as_words(database.data)
    out = np.empty((q.shape[0], d.shape[0]), np.int32)
    block = max(1, _BLOCK_BYTES // max(1, d.nbytes))
    for start in range(0, q.shape[0], block):
        qb = q[start : start + block]
        acc = np.zeros((qb.shape[0], d.shape[0]), np.int32)
        for w in range(q.shape[1]):
            acc += np.bitwise_count(qb[:, w, None] ^ d[None, :, w])
        out[start : start + block] = acc
    return out
