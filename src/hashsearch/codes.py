"""Bit packing and Hamming-distance kernels over packed codes."""

from __future__ import annotations

import numpy as np

from hashsearch.types import Codes

# Hamming distances are computed in blocks of queries so a (block, n) int matrix stays small.
_BLOCK_BYTES = 64 << 20


def pack_bits(bits: np.ndarray) -> Codes:
    """Pack a (n, n_bits) array of 0/1 values (any integer or bool dtype) into Codes (`Codes.from_bits`)."""
    return Codes.from_bits(bits)


def unpack_bits(codes: Codes) -> np.ndarray:
    """Unpack Codes to a (n, n_bits) uint8 array of 0/1 (`Codes.to_bits`)."""
    return codes.to_bits()


def word_view(data: np.ndarray) -> np.ndarray:
    """Packed codes (n, n_bytes) uint8 as (n, W) machine words, without a copy where possible.

    4-byte codes become uint32 words, multiples of 8 bytes uint64 words (views); other widths
    are copied into zero-padded uint64 words (padding adds nothing to a distance).
    """
    n, n_bytes = data.shape
    if data.flags.c_contiguous and n_bytes in (4,) and data.ctypes.data % 4 == 0:
        return data.view(np.uint32)
    if data.flags.c_contiguous and n_bytes % 8 == 0 and data.ctypes.data % 8 == 0:
        return data.view(np.uint64)
    if n_bytes == 4:
        return np.ascontiguousarray(data).view(np.uint32)
    padded = np.zeros((n, -(-n_bytes // 8) * 8), np.uint8)
    padded[:, :n_bytes] = data
    return padded.view(np.uint64)


def hamming_distances(queries: Codes, database: Codes) -> np.ndarray:
    """All pairwise Hamming distances, shape (n_queries, n_database), dtype int32."""
    if queries.n_bits != database.n_bits:
        raise ValueError(f"queries have {queries.n_bits} bits but the database has {database.n_bits}")
    d = word_view(database.data)
    q = word_view(queries.data)  # the same word type and width: both have n_bytes per row
    out = np.empty((q.shape[0], d.shape[0]), np.int32)
    block = max(1, _BLOCK_BYTES // max(1, d.nbytes))
    for start in range(0, q.shape[0], block):
        qb = q[start : start + block]
        acc = np.zeros((qb.shape[0], d.shape[0]), np.int32)
        for w in range(q.shape[1]):
            acc += np.bitwise_count(qb[:, w, None] ^ d[None, :, w])
        out[start : start + block] = acc
    return out
