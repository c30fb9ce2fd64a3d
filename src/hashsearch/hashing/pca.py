"""PCA hashing (PCAH) and PCA with a random rotation (PCA-RR), plus the PCA helpers ITQ reuses."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hashsearch.hashing.base import register_hasher
from hashsearch.hashing.lsh import ProjectionHasher


def pca(X: np.ndarray, n_components: int, param: str = "n_bits") -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and top principal directions (d, n_components) of `X`, in float64.

    Directions are sorted by decreasing variance; each is signed so that its largest-magnitude
    entry is positive (as scikit-learn's `svd_flip`), so the result does not depend on the
    LAPACK build. `param` names the parameter in the error raised when there are too few features.
    """
    n, d = X.shape
    if n_components > d:
        raise ValueError(
            f"{param}={n_components} is larger than the {d} feature dimensions; PCA-based hashers "
            f"need {param} <= n_features: lower {param} or use 'lsh', which has no such limit"
        )
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = X.astype(np.float64) - mean
    # Eigen-decomposition of the d x d scatter matrix: O(n d^2) like an SVD of Xc, but the
    # LAPACK call works on d x d only, which is cheaper when n >> d (the usual case).
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)
    order = np.argsort(evals)[::-1][:n_components]
    components = evecs[:, order]
    flip = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_components)])
    flip[flip == 0] = 1.0
    return mean, components * flip


def random_rotation(n: int, seed: int) -> np.ndarray:
    """A random n x n orthogonal matrix (QR of a seeded Gaussian matrix, Haar-distributed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    # Multiplying column j by sign(r_jj) makes the distribution uniform over rotations.
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


@register_hasher("pcah")
class PCAH(ProjectionHasher):
    """PCA hashing: project onto the top `n_bits` principal directions and take the sign.

    Parameters
    ----------
    n_bits : int
        Code length; must not exceed the feature dimension.
    seed : int
        Unused (PCA is deterministic); kept so every hasher takes the same arguments.
    """

    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "components_", "projection_")

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        mean, components = pca(X, self.n_bits)
        self.mean_ = mean.astype(np.float32)
        self.components_ = components.astype(np.float32)
        self.projection_ = self.components_


@register_hasher("pca-rr")
class PCARR(ProjectionHasher):
    """PCA followed by a random orthogonal rotation, then the sign (Gong & Lazebnik's PCA-RR baseline).

    The rotation spreads the variance evenly over the bits, which PCAH concentrates in the first few.

    Parameters
    ----------
    n_bits : int
        Code length; must not exceed the feature dimension.
    seed : int
        Seed of the random rotation.
    """

    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "components_", "rotation_", "projection_")

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        mean, components = pca(X, self.n_bits)
        rotation = random_rotation(self.n_bits, self.seed)
        self.mean_ = mean.astype(np.float32)
        self.components_ = components.astype(np.float32)
        self.rotation_ = rotation.astype(np.float32)
        self.projection_ = (components @ rotation).astype(np.float32)
