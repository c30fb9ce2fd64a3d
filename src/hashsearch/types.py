"""The objects passed between stages: packed binary codes and search results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashsearch.validation import check_int

#: Id returned in a SearchResult slot that holds no neighbour (fewer than k entries exist).
MISSING_ID = -1


@dataclass(frozen=True)
class Codes:
    """Binary codes packed 8 bits per byte, most significant bit first (NumPy's `packbits` order).

    `data` has shape (n, ceil(n_bits / 8)) and dtype uint8; padding bits of the last byte are 0.
    """

    data: np.ndarray
    n_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.data, np.ndarray) or self.data.dtype != np.uint8 or self.data.ndim != 2:
            raise TypeError(
                f"Codes.data must be a 2-d uint8 array, got {type(self.data).__name__} "
                f"{getattr(self.data, 'dtype', '')} {getattr(self.data, 'shape', '')}"
            )
        check_int("Codes.n_bits", self.n_bits, low=1)
        n_bytes = (self.n_bits + 7) // 8
        if self.data.shape[1] != n_bytes:
            raise ValueError(f"Codes of n_bits={self.n_bits} need {n_bytes} bytes per row, got {self.data.shape[1]}")
        spare = (-self.n_bits) % 8
        if spare and len(self.data):
            bad = np.flatnonzero(self.data[:, -1] & np.uint8((1 << spare) - 1))
            if bad.size:
                raise ValueError(
                    f"Codes rows {bad[:5].tolist()} have padding bits set beyond bit {self.n_bits}; "
                    "they would add to every distance: build codes with Codes.from_bits or hashsearch.codes.pack_bits"
                )

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, rows) -> Codes:
        data = self.data[rows]
        return Codes(data.reshape(-1, self.data.shape[1]), self.n_bits)

    @property
    def n_bytes(self) -> int:
        return self.data.shape[1]

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Codes:
        """Pack a (n, n_bits) array of 0/1 values (any integer or bool dtype) into Codes.

        Raises ValueError if `bits` is not 2-d or holds values other than 0 and 1.
        """
        bits = np.asarray(bits)
        if bits.ndim != 2:
            raise ValueError(f"bits must be a 2-d (n, n_bits) array, got shape {bits.shape}")
        if bits.size and not np.isin(bits, (0, 1)).all():
            raise ValueError("bits must hold only 0 and 1; threshold real values before packing")
        return cls(np.packbits(bits.astype(np.uint8), axis=1), bits.shape[1])

    def to_bits(self) -> np.ndarray:
        """Unpack to a (n, n_bits) uint8 array of 0/1."""
        return np.unpackbits(self.data, axis=1, count=self.n_bits)


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of each query, nearest first; ties are broken by ascending id.

    `ids` and `distances` have shape (n_queries, k). Where fewer than k neighbours exist, the
    remaining slots hold id MISSING_ID (-1) and distance -1 (int) or +inf (float re-rank distances).
    """

    distances: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class RangeResult:
    """Neighbours within a Hamming radius, for all queries at once (faiss's range layout).

    The neighbours of query i are `ids[lims[i]:lims[i+1]]` at `distances[lims[i]:lims[i+1]]`,
    sorted by (distance, id).
    """

    lims: np.ndarray
    distances: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.lims) - 1

    def query(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of query i."""
        a, b = self.lims[i], self.lims[i + 1]
        return self.distances[a:b], self.ids[a:b]
