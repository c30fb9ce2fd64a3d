"""ITQ's optimisation, and the PCA hashers it builds on."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.hashing import NotFittedError, create_hasher
from hashsearch.hashing.itq import ITQ
from hashsearch.hashing.pca import pca, random_rotation


def rotated_loss(hasher, X) -> float:
    """||sign(V) - V||_F^2 for V = (X - mean) @ projection, in float64."""
    V = (X.astype(np.float64) - hasher.mean_) @ hasher.projection_.astype(np.float64)
    return float(np.sum((np.where(V >= 0, 1.0, -1.0) - V) ** 2))


@pytest.mark.parametrize("n_bits", [8, 16, 32])
def test_quantization_loss_never_increases(clustered, n_bits):
    X, _ = clustered
    itq = ITQ(n_bits=n_bits, n_iter=50).fit(X)
    loss = itq.quantization_loss_
    assert loss.shape == (50,) and loss.dtype == np.float64
    assert np.all(np.diff(loss) <= 1e-6 * loss[:-1]), loss
    assert loss[-1] < loss[0]


def test_rotation_is_orthogonal(clustered):
    X, _ = clustered
    itq = ITQ(n_bits=16).fit(X)
    R = itq.rotation_.astype(np.float64)
    np.testing.assert_allclose(R.T @ R, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(itq.projection_, itq.components_ @ itq.rotation_, atol=1e-5)


def test_recorded_loss_matches_the_learned_rotation(clustered):
    X, _ = clustered
    itq = ITQ(n_bits=16).fit(X)
    assert rotated_loss(itq, X) == pytest.approx(itq.quantization_loss_[-1], rel=1e-4)


def test_itq_ends_below_pca_rr(clustered):
    X, _ = clustered
    for seed in (0, 1):
        itq = create_hasher("itq", n_bits=16, seed=seed).fit(X)
        rr = create_hasher("pca-rr", n_bits=16, seed=seed).fit(X)
        # ITQ starts from PCA-RR's rotation, so it can only improve on it
        assert itq.quantization_loss_[-1] < rotated_loss(rr, X)
        assert rotated_loss(itq, X) < rotated_loss(rr, X)


def test_zero_iterations_is_pca_rr(clustered):
    X, _ = clustered
    itq = ITQ(n_bits=16, seed=2, n_iter=0).fit(X)
    rr = create_hasher("pca-rr", n_bits=16, seed=2).fit(X)
    assert itq.quantization_loss_.shape == (0,)
    np.testing.assert_array_equal(itq.encode(X).data, rr.encode(X).data)


@pytest.mark.parametrize("n_iter", [-1, 2.5, "50"])
def test_bad_n_iter(clustered, n_iter):
    X, _ = clustered
    with pytest.raises(ValueError, match="n_iter"):
        ITQ(n_bits=8, n_iter=n_iter).fit(X)


@pytest.mark.parametrize("name", ["pcah", "pca-rr", "itq"])
def test_pca_hashers_reject_more_bits_than_features(clustered, name):
    X, _ = clustered
    hasher = create_hasher(name, n_bits=33)
    with pytest.raises(ValueError, match="n_bits=33.*32 feature dimensions"):
        hasher.fit(X)
    with pytest.raises(NotFittedError):  # a failed fit leaves it unfitted
        hasher.encode(X)
    create_hasher(name, n_bits=32).fit(X)  # the limit itself is fine


def test_pca_directions(clustered):
    X, _ = clustered
    mean, W = pca(X, 8)
    np.testing.assert_allclose(mean, X.mean(0), atol=1e-5)
    np.testing.assert_allclose(W.T @ W, np.eye(8), atol=1e-10)
    var = ((X - mean) @ W).var(axis=0)
    assert np.all(np.diff(var) <= 1e-9)  # sorted by decreasing variance
    # agrees with an SVD up to sign
    _, _, Vt = np.linalg.svd(X.astype(np.float64) - mean, full_matrices=False)
    np.testing.assert_allclose(np.abs(W.T @ Vt[:8].T), np.eye(8), atol=1e-6)


def test_random_rotation_is_seeded_and_orthogonal():
    R = random_rotation(12, 5)
    np.testing.assert_allclose(R.T @ R, np.eye(12), atol=1e-12)
    np.testing.assert_array_equal(R, random_rotation(12, 5))
    assert not np.allclose(R, random_rotation(12, 6))


def test_pcah_bits_are_signs_of_principal_projections(clustered):
    X, _ = clustered
    h = create_hasher("pcah", n_bits=8).fit(X)
    mean, W = pca(X, 8)
    expected = (X.astype(np.float64) - mean) @ W > 0
    np.testing.assert_array_equal(h.encode(X).to_bits(), expected)
