"""Iterative quantization (ITQ): PCA, then the rotation that best aligns the data with the hypercube's vertices."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hashsearch.hashing.base import register_hasher
from hashsearch.hashing.lsh import ProjectionHasher
from hashsearch.hashing.pca import pca, random_rotation
from hashsearch.validation import check_int


def quantization_loss(B: np.ndarray, VR: np.ndarray) -> float:
    """ITQ's objective ``||B - V R||_F^2`` for +-1 codes `B` and rotated projections `VR`."""
    return float(np.sum((B - VR) ** 2))


def itq_rotation(V: np.ndarray, n_iter: int, seed: int) -> tuple[np.ndarray, list[float]]:
    """ITQ's alternating minimisation of ``||B - V R||_F^2`` (Gong & Lazebnik, CVPR 2011).

    `V` is (n, c) float64 (centred, projected data); starts from the seeded random rotation of
    PCA-RR. Returns R, (c, c) float64 orthogonal, and the loss after each of `n_iter` iterations.
    """
    R = random_rotation(V.shape[1], seed)
    losses = []
    for _ in range(int(n_iter)):
        B = np.where(V @ R >= 0, 1.0, -1.0)
        # Orthogonal Procrustes: maximise tr(R^T V^T B). With B^T V = S Omega S_hat^T we
        # have V^T B = S_hat Omega S^T, whose maximiser is R = S_hat S^T.
        S, _, S_hat_T = np.linalg.svd(B.T @ V)
        R = S_hat_T.T @ S.T
        losses.append(quantization_loss(B, V @ R))
    return R, losses


@register_hasher("itq")
class ITQ(ProjectionHasher):
    """ITQ (Gong & Lazebnik, CVPR 2011): PCA to `n_bits` dimensions, V, then alternate

    1. ``B = sign(V R)``, the best codes for a fixed rotation;
    2. the orthogonal Procrustes step for fixed codes: with ``B^T V = S Omega S_hat^T`` (SVD),
       ``R = S_hat S^T``, the orthogonal R that minimises ``||B - V R||_F^2``.

    Each step can only lower the quantization loss, so `quantization_loss_` (the loss after
    each iteration's rotation update) is non-increasing. The initial R is the same seeded
    random rotation that `PCARR` uses, so ITQ starts from PCA-RR and improves on it.

    Parameters
    ----------
    n_bits : int
        Code length; must not exceed the feature dimension.
    seed : int
        Seed of the initial random rotation.
    n_iter : int
        Number of alternating iterations (the paper uses 50).

    Attributes
    ----------
    mean_ : (d,) training mean; components_ : (d, n_bits) PCA directions;
    rotation_ : (n_bits, n_bits) learned orthogonal R; projection_ : components_ @ rotation_;
    quantization_loss_ : (n_iter,) float64 loss after each iteration.
    """

    _state_names: ClassVar[tuple[str, ...]] = (
        "mean_",
        "components_",
        "rotation_",
        "projection_",
        "quantization_loss_",
    )

    def __init__(self, n_bits: int = 64, seed: int = 0, n_iter: int = 50) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.n_iter = n_iter

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        check_int("n_iter", self.n_iter, low=0)
        mean, components = pca(X, self.n_bits)
        R, losses = itq_rotation((X.astype(np.float64) - mean) @ components, self.n_iter, self.seed)
        self.mean_ = mean.astype(np.float32)
        self.components_ = components.astype(np.float32)
        self.rotation_ = R.astype(np.float32)
        self.projection_ = (components @ R).astype(np.float32)
        self.quantization_loss_ = np.asarray(losses, np.float64)
