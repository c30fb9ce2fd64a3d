"""The classic baselines (SKLSH, SH, SpH, density-sensitive hashing, CCA-ITQ, KSH, SDH): behaviour from their papers,
and retrieval on real CIFAR-10 features against LSH."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.hashing import create_hasher
from hashsearch.hashing.classic import KernelFeatures, one_hot
from hashsearch.hashing.itq import itq_rotation

CLASSIC = ["sklsh", "sh", "sph", "dsh-density", "cca-itq", "ksh", "sdh"]


def lsh_map(hamming_map, X, y, Xq, yq, bits, seeds=range(5)):
    return float(np.mean([hamming_map(create_hasher("lsh", n_bits=bits, seed=s).fit(X), Xq, yq, X, y) for s in seeds]))


@pytest.mark.parametrize("name", CLASSIC)
def test_registered(name):
    assert create_hasher(name).name == name


@pytest.mark.parametrize(
    "name,margin",
    [("sklsh", -0.05), ("sh", 0.0), ("sph", 0.0), ("dsh-density", 0.0), ("cca-itq", 0.1), ("ksh", 0.1), ("sdh", 0.1)],
)
def test_beats_lsh_on_real_features(name, margin, cifar_features, real_map):
    """Data-dependent and supervised codes retrieve better than random hyperplanes (LSH, mean of 5 seeds).

    SKLSH is itself a random method, below LSH on CIFAR-10 at every code length in the RITQ paper's
    Table II (0.147/0.165/0.192 vs 0.182/0.238/0.262 at 16/64/128 bits) and here at every kernel
    width tried (benchmarks/results/sklsh-vs-lsh.md); for it we check that it is within 0.05 of LSH
    and well above chance (0.1) instead.
    """
    X, y, Xq, yq = cifar_features
    bits = 32
    h = create_hasher(name, n_bits=bits)
    h.fit(X, y if h.supervised else None)
    ours, lsh = real_map(h, Xq, yq, X, y), lsh_map(real_map, X, y, Xq, yq, bits)
    assert ours > lsh + margin, f"{name}: {ours:.3f} vs LSH {lsh:.3f}"
    assert ours > 0.15


def test_spectral_hashing_picks_the_smallest_eigenvalues():
    """With one wide and one narrow PCA direction, the first modes all lie along the wide one."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-10, 10, 2000), rng.uniform(-1, 1, 2000)].astype(np.float32)
    h = create_hasher("sh", n_bits=4).fit(X)
    # eigenvalue ~ (k / span)^2: spans 20 vs 2, so k = 1..4 along the wide direction (PCA dim 0) come first
    assert list(h.mode_dim_) == [0, 0, 0, 0] and list(h.mode_k_) == [1, 2, 3, 4]


def test_spherical_hashing_balances_bits():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 8)).astype(np.float32)
    bits = create_hasher("sph", n_bits=16, n_samples=1000).fit(X).encode(X).to_bits()
    assert np.abs(bits.mean(0) - 0.5).max() < 0.1


def test_density_sensitive_projections_bisect_cluster_pairs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    X = (centres[rng.integers(0, 4, 800)] + rng.normal(0, 0.5, (800, 2))).astype(np.float32)
    h = create_hasher("dsh-density", n_bits=2, alpha=2.0).fit(X)
    bits = h.encode(X).to_bits()
    assert np.abs(bits.mean(0) - 0.5).max() < 0.15  # highest-entropy candidates split the data in half


def test_cca_itq_needs_labels_and_limits_bits(clustered):
    X, y = clustered
    with pytest.raises(ValueError, match="labels"):
        create_hasher("cca-itq", n_bits=8).fit(X)
    with pytest.raises(ValueError, match="n_bits"):
        create_hasher("cca-itq", n_bits=X.shape[1] + 1).fit(X, y)


def test_ksh_codes_fit_pairwise_labels(clustered):
    """KSH's objective: code inner products approximate n_bits * S, much better than random codes do."""
    X, y = clustered
    S = np.where(y[:200, None] == y[None, :200], 1.0, -1.0)

    errs = {}
    for name in ("ksh", "sklsh"):
        h = create_hasher(name, n_bits=8, **({"n_anchors": 50, "n_labelled": 200} if name == "ksh" else {}))
        B = h.fit(X, y).encode(X[:200]).to_bits() * 2.0 - 1
        errs[name] = np.linalg.norm(B @ B.T / 8 - S)
    assert errs["ksh"] < 0.8 * errs["sklsh"], errs


def test_sdh_classifier_predicts_labels_from_codes(clustered):
    X, y = clustered
    h = create_hasher("sdh", n_bits=16, n_anchors=100).fit(X, y)
    B = h.encode(X).to_bits() * 2.0 - 1
    assert ((B @ h.classifier_).argmax(1) == y).mean() > 0.9


def test_helpers():
    np.testing.assert_array_equal(one_hot(np.array([2, 0, 2])), [[0, 1], [1, 0], [0, 1]])
    R, losses = itq_rotation(np.random.default_rng(0).normal(size=(50, 4)), 5, 0)
    assert len(losses) == 5 and all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))
    np.testing.assert_allclose(R @ R.T, np.eye(4), atol=1e-10)
    K = KernelFeatures.transform(np.zeros((1, 2)), np.zeros((1, 2)), 1.0)
    assert K[0, 0] == 1.0


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("sklsh", {"gamma": -1.0}, "gamma"),
        ("sph", {"n_iter": -1}, "n_iter"),
        ("dsh-density", {"alpha": 0}, "alpha"),
        ("ksh", {"n_anchors": 0}, "n_anchors"),
        ("sdh", {"n_iter": 0}, "n_iter"),
    ],
)
def test_bad_params(name, params, match, clustered):
    X, y = clustered
    with pytest.raises(ValueError, match=match):
        create_hasher(name, n_bits=8, **params).fit(X, y)
