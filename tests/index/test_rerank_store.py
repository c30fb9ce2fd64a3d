"""Compact re-rank stores: shapes, sizes, round trips through save/load, and how close re-ranking stays."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.index.rerank_store import RerankStore, create_rerank_store

SPECS = ["full", "pca-16", "int8", "pq-8"]
pytestmark = pytest.mark.filterwarnings("ignore:pq-.* fitted on")  # small test sets; the warning has its own test


def features(n=2000, d=64, rank=12, seed=0):
    """Features that live near a `rank`-dimensional subspace, as backbone features roughly do."""
    g = np.random.default_rng(seed)
    basis = g.standard_normal((rank, d)).astype(np.float32)
    return (g.standard_normal((n, rank)).astype(np.float32) @ basis + 0.05 * g.standard_normal((n, d))).astype(
        np.float32
    )


@pytest.mark.parametrize("spec", SPECS)
def test_encode_decode_save_load(tmp_path, spec):
    X = features()
    store = create_rerank_store(spec).fit(X)
    rows = store.encode(X[:50])
    assert rows.shape == (50, store.row_width) and rows.dtype == store.row_dtype
    assert store.bytes_per_vector == rows.nbytes // 50
    dec, q = store.decode(rows), store.query(X[:50])
    assert dec.dtype == np.float32 and dec.shape == q.shape
    store.save(tmp_path / "store.npz")
    back = RerankStore.load(tmp_path / "store.npz")
    assert back.spec == spec
    np.testing.assert_array_equal(back.encode(X[:50]), rows)
    np.testing.assert_array_equal(back.decode(rows), dec)


def test_sizes_per_vector():
    X = features(d=64)
    sizes = {s: create_rerank_store(s).fit(X).bytes_per_vector for s in SPECS}
    assert sizes == {"full": 128, "pca-16": 32, "int8": 64, "pq-8": 8}


@pytest.mark.parametrize("spec, tol", [("full", 0.01), ("pca-16", 0.01), ("int8", 0.02), ("pq-8", 0.5)])
def test_distances_close_to_full(spec, tol):
    """Distances from a query to stored vectors, relative to the exact float32 distances."""
    X = features()
    store = create_rerank_store(spec).fit(X)
    q = X[:5] + 0.01
    exact = np.linalg.norm(q[:, None] - X[None, 100:300], axis=2)
    approx = np.linalg.norm(store.query(q)[:, None] - store.decode(store.encode(X[100:300]))[None], axis=2)
    assert np.median(np.abs(approx - exact) / exact) < tol


def test_int8_error_within_half_a_step():
    X = features()
    store = create_rerank_store("int8").fit(X)
    err = np.abs(store.decode(store.encode(X)) - X)
    assert (err <= store.step_ * 0.5001).all()


@pytest.mark.parametrize(
    "spec, message",
    [("pca", "pca-N"), ("pq-x", "pca-N"), ("float32", "full, int8"), ("pca-0", "N >= 1"), ("pq-7", "divide")],
)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        create_rerank_store(spec).fit(features())


def test_unfitted_and_wrong_width():
    with pytest.raises(ValueError, match="not fitted"):
        create_rerank_store("int8").encode(features(n=3))
    store = create_rerank_store("pca-16").fit(features())
    with pytest.raises(ValueError, match="64 dimensions|dimensions but"):
        store.encode(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="pca-17 needs N <="):
        create_rerank_store("pca-17").fit(features(n=10, d=16))


def test_damaged_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        RerankStore.load(tmp_path / "x.npz")


@pytest.mark.parametrize("spec, tol", [("full", 0.001), ("pca-16", 0.02), ("int8", 0.01), ("pq-8", 0.5)])
def test_reconstruct_gives_features_back(spec, tol):
    """`reconstruct` maps stored rows back to the feature space (d values), close to the features."""
    X = features()
    store = create_rerank_store(spec).fit(X)
    back = store.reconstruct(store.encode(X[:200]))
    assert back.shape == (200, 64) and back.dtype == np.float32
    rel = np.linalg.norm(back - X[:200], axis=1) / np.linalg.norm(X[:200], axis=1)
    assert np.median(rel) < tol


def test_a_pca_store_ranks_as_its_reconstructions_do():
    """Distances in the PCA space and to the reconstructions differ by a per-query constant only."""
    X = features()
    store = create_rerank_store("pca-16").fit(X)
    rows, q = store.encode(X[100:300]), X[:3] + 0.3
    in_pca = np.linalg.norm(store.query(q)[:, None] - store.decode(rows)[None], axis=2)
    to_rec = np.linalg.norm(q[:, None] - store.reconstruct(rows)[None], axis=2)
    np.testing.assert_allclose(to_rec**2 - in_pca**2, (to_rec**2 - in_pca**2)[:, :1].repeat(200, 1), atol=1e-2)


def test_full_of_dim_is_fitted():
    from hashsearch.index.rerank_store import FullStore

    store = FullStore.of_dim(64)
    assert store.is_fitted and not create_rerank_store("full").is_fitted
    np.testing.assert_array_equal(store.encode(features()[:3]), features()[:3].astype(np.float16))


def test_pq_on_few_features_warns_once(capfd):
    with pytest.warns(UserWarning, match="pq-8 fitted on 2,000 features") as caught:
        create_rerank_store("pq-8").fit(features())
    assert len(caught) == 1 and "WARNING clustering" not in capfd.readouterr().err  # not faiss's 8 lines
