"""Locality-sensitive hashing (random hyperplanes), and the linear sign hasher it shares with PCA and ITQ."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hashsearch.hashing.base import Hasher, register_hasher


class ProjectionHasher(Hasher):
    """A hasher whose bit j is ``(x - mean_) @ projection_[:, j] > 0``.

    LSH, PCAH, PCA-RR and ITQ differ only in how they learn `projection_` (d, n_bits); they
    share this encoder. Subclasses set `mean_` and `projection_` in `_fit` (float32, so that
    encoding float32 features stays in float32) and may add learned arrays to `_state_names`.
    """

    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "projection_")

    def _bits(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.projection_ > 0


@register_hasher("lsh")
class LSH(ProjectionHasher):
    """Random Gaussian hyperplanes through the training mean (Charikar 2002).

    Data-independent apart from the mean: bit j is ``(x - mean) @ w_j > 0`` with
    ``w_j ~ N(0, I)`` drawn from `seed`.

    Parameters
    ----------
    n_bits : int
        Code length.
    seed : int
        Seed of the random hyperplanes.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 16)).astype("float32")
    >>> LSH(n_bits=12).fit(X).encode(X).n_bits
    12
    """

    data_independent: ClassVar[bool] = True

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        rng = np.random.default_rng(self.seed)
        self.mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.projection_ = rng.standard_normal((X.shape[1], self.n_bits)).astype(np.float32)
