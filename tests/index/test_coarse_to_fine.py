"""Coarse-to-fine search against a brute-force reference of its documented candidate rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hashsearch.index.coarse_to_fine as c2f_module
from hashsearch.codes import pack_bits
from hashsearch.index import create_index, index_backends, list_indexes
from hashsearch.index.coarse_to_fine import coarse_to_fine
from hashsearch.types import MISSING_ID

# In-process exact back ends; Milvus (a server per index here) is held to the same search and
# range_search answers by the contract tests, which is all coarse_to_fine calls.
EXACT = [name for name in list_indexes() if index_backends.get(name).exact and name != "milvus"]


def reference(db_bits, db_ids, db_feats, q_bits, q_feats, k, radius, n_candidates):
    """The documented rule, one query at a time: radius pool if it holds >= n_candidates,
    else the n_candidates nearest by (Hamming, id); then order by (Euclidean, id)."""
    nq = len(q_bits)
    out_d = np.full((nq, k), np.inf, np.float32)
    out_i = np.full((nq, k), MISSING_ID, np.int64)
    for qi in range(nq):
        ham = (db_bits != q_bits[qi]).sum(axis=1)
        within = np.flatnonzero(ham <= radius)
        if len(within) >= n_candidates:
            pool = within
        else:
            pool = np.lexsort((db_ids, ham))[:n_candidates]
        sq = ((db_feats[pool].astype(np.float64) - q_feats[qi]) ** 2).sum(axis=1)
        order = np.lexsort((db_ids[pool], sq))[:k]
        out_d[qi, : len(order)] = np.sqrt(sq[order])
        out_i[qi, : len(order)] = db_ids[pool][order]
    return out_d, out_i


class Lookup:
    """feature_lookup over a dict-like table, recording the ids it was asked for."""

    def __init__(self, ids, feats, dtype=None):
        self.row = {int(i): r for r, i in enumerate(ids)}
        self.feats = feats if dtype is None else feats.astype(dtype)
        self.calls: list[np.ndarray] = []

    def __call__(self, ids):
        self.calls.append(np.array(ids))
        return self.feats[[self.row[int(i)] for i in ids]]


def setup(g, name, n, n_bits, dim, n_centres, seed_ids=True):
    """Clustered codes (many Hamming ties) and small-integer features (many exact L2 ties)."""
    centres = g.integers(0, 2, (n_centres, n_bits))
    bits = centres[g.integers(0, n_centres, n)] ^ (g.random((n, n_bits)) < 0.08)
    ids = g.choice(5 * n + 5, size=n, replace=False) if seed_ids else np.arange(n)
    feats = g.integers(-2, 3, (n, dim)).astype(np.float32)
    index = create_index(name, n_bits=n_bits)
    index.add(pack_bits(bits), ids)
    return index, bits.astype(np.uint8), ids.astype(np.int64), feats, centres


@pytest.mark.parametrize("name", EXACT)
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 70),
    k=st.integers(1, 15),
    radius=st.integers(0, 3),
    n_candidates=st.integers(1, 40),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(name, n, k, radius, n_candidates, dim, seed):
    g = np.random.default_rng(seed)
    index, bits, ids, feats, centres = setup(g, name, n, 12, dim, 3)
    q_bits = (centres[g.integers(0, 3, 6)] ^ (g.random((6, 12)) < 0.1)).astype(np.uint8)
    q_feats = g.integers(-2, 3, (6, dim)).astype(np.float32)
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, Lookup(ids, feats), k, radius, n_candidates)
    exp_d, exp_i = reference(bits, ids, feats, q_bits, q_feats, k, radius, n_candidates)
    assert res.ids.shape == res.distances.shape == (6, k)
    assert res.distances.dtype == np.float32 and res.ids.dtype == np.int64
    np.testing.assert_array_equal(res.ids, exp_i)
    np.testing.assert_array_equal(res.distances, exp_d)


@pytest.mark.parametrize("name", EXACT)
def test_radius_branch_and_fallback_branch(name):
    """Ten entries share the query's code; one is 5 bits away but has the query's exact feature."""
    g = np.random.default_rng(0)
    q_bits = g.integers(0, 2, (1, 32)).astype(np.uint8)
    far = q_bits.copy()
    far[0, :5] ^= 1
    bits = np.concatenate([np.repeat(q_bits, 10, axis=0), far])
    feats = np.concatenate([g.normal(5, 1, (10, 8)), np.zeros((1, 8))]).astype(np.float32)
    ids = np.arange(100, 111)
    index = create_index(name, n_bits=32)
    index.add(pack_bits(bits), ids)
    q_feats = np.zeros((1, 8), np.float32)
    lookup = Lookup(ids, feats)

    # Radius pool of 10 >= n_candidates: the pool is exactly the 10 within radius (more than n_candidates).
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=11, radius=2, n_candidates=4)
    assert 110 not in res.ids and sorted(res.ids[0, :10].tolist()) == list(range(100, 110))
    assert res.ids[0, 10] == MISSING_ID and np.isinf(res.distances[0, 10])

    # Radius pool of 10 < n_candidates: the top 11 by Hamming distance, which reach entry 110.
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=3, radius=2, n_candidates=11)
    assert res.ids[0, 0] == 110 and res.distances[0, 0] == 0

    # The boundary: a radius pool of exactly n_candidates is kept; one fewer falls back.
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=3, radius=0, n_candidates=10)
    assert 110 not in res.ids
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=3, radius=0, n_candidates=11)
    assert res.ids[0, 0] == 110
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=3, radius=0, n_candidates=20)
    assert res.ids[0, 0] == 110, "fewer entries than n_candidates: the pool is the whole index"
    exp = reference(bits, ids, feats, q_bits, q_feats, 11, 2, 4)
    np.testing.assert_array_equal(
        coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, k=11, radius=2, n_candidates=4).ids, exp[1]
    )


@pytest.mark.parametrize("name", EXACT)
def test_noisy_copy_of_the_true_neighbour_ranks_first(name):
    g = np.random.default_rng(1)
    n, dim, n_bits = 3000, 64, 16
    # Few distinct codes, so Hamming ranking alone cannot single out the true neighbour.
    bits = g.integers(0, 2, (8, n_bits))[g.integers(0, 8, n)].astype(np.uint8)
    feats = g.normal(size=(n, dim)).astype(np.float16)
    index = create_index(name, n_bits=n_bits)
    index.add(pack_bits(bits))
    truth = g.choice(n, size=50, replace=False)
    q_bits = bits[truth].copy()
    q_bits[np.arange(50), g.integers(0, n_bits, 50)] ^= 1  # one bit off the true code
    q_feats = feats[truth].astype(np.float32) + g.normal(0, 0.05, (50, dim)).astype(np.float32)
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lambda i: feats[i], k=5, radius=2, n_candidates=200)
    np.testing.assert_array_equal(res.ids[:, 0], truth)
    assert res.distances.dtype == np.float32
    assert (np.diff(res.distances, axis=1) >= 0).all()
    hamming_only = index.search(pack_bits(q_bits), 5)
    assert (hamming_only.ids[:, 0] != truth).any(), "the test should need the fine level"


def test_equal_features_tie_by_id_at_any_dimension():
    """Equal stored features give bit-equal distances wherever they sit in memory."""
    g = np.random.default_rng(2)
    for dim in (1, 3, 7, 17, 33, 130):
        n = 40
        feats = g.normal(size=(n, dim)).astype(np.float32)
        feats[g.random(n) < 0.5] = feats[0]
        index = create_index("flat", n_bits=8)
        index.add(pack_bits(np.zeros((n, 8), np.uint8)), g.permutation(1000)[:n])
        lookup = Lookup(index.ids, feats)
        q = g.normal(size=(3, dim)).astype(np.float32)
        res = coarse_to_fine(index, pack_bits(np.zeros((3, 8), np.uint8)), q, lookup, k=n, radius=0, n_candidates=1)
        for row_d, row_i in zip(res.distances, res.ids):
            for a in range(n - 1):
                assert (row_d[a], row_i[a]) < (row_d[a + 1], row_i[a + 1])


def test_lookup_called_once_per_id_in_chunks(monkeypatch):
    g = np.random.default_rng(3)
    index, bits, ids, feats, centres = setup(g, "flat", 200, 10, 4, 2)
    q_bits = centres[g.integers(0, 2, 30)].astype(np.uint8)
    q_feats = g.normal(size=(30, 4)).astype(np.float32)
    expected = coarse_to_fine(index, pack_bits(q_bits), q_feats, Lookup(ids, feats), 12, 2, 50)
    monkeypatch.setattr(c2f_module, "_CHUNK_VALUES", 4 * 7)  # 7 ids per lookup
    lookup = Lookup(ids, feats, dtype=np.float16)  # float16 storage is fine (features are small ints)
    res = coarse_to_fine(index, pack_bits(q_bits), q_feats, lookup, 12, 2, 50)
    np.testing.assert_array_equal(res.ids, expected.ids)
    np.testing.assert_array_equal(res.distances, expected.distances)
    asked = np.concatenate(lookup.calls)
    assert len(lookup.calls) > 1 and all(len(c) <= 7 for c in lookup.calls)
    assert len(np.unique(asked)) == len(asked), "each id is fetched once"
    assert all((np.diff(c) > 0).all() for c in lookup.calls), "ids come sorted"


def test_empty_index_and_no_queries():
    index = create_index("flat", n_bits=16)
    q = pack_bits(np.zeros((2, 16), np.uint8))
    res = coarse_to_fine(index, q, np.zeros((2, 3)), lambda ids: np.zeros((len(ids), 3)), k=4)
    assert (res.ids == MISSING_ID).all() and np.isinf(res.distances).all() and res.ids.shape == (2, 4)
    index.add(pack_bits(np.zeros((3, 16), np.uint8)))
    res = coarse_to_fine(index, q[:0], np.zeros((0, 3)), lambda ids: np.zeros((len(ids), 3)), k=4)
    assert res.ids.shape == (0, 4)


def test_argument_checks():
    index = create_index("flat", n_bits=16)
    index.add(pack_bits(np.zeros((3, 16), np.uint8)))
    q = pack_bits(np.zeros((2, 16), np.uint8))
    f = np.zeros((2, 3), np.float32)
    lookup = lambda ids: np.zeros((len(ids), 3))  # noqa: E731
    with pytest.raises(ValueError, match="query_features"):
        coarse_to_fine(index, q, f[:1], lookup, k=2)
    with pytest.raises(ValueError, match="radius"):
        coarse_to_fine(index, q, f, lookup, k=2, radius=-1)
    with pytest.raises(ValueError, match="n_candidates"):
        coarse_to_fine(index, q, f, lookup, k=2, n_candidates=0)
    with pytest.raises(ValueError, match="k"):
        coarse_to_fine(index, q, f, lookup, k=0)
    with pytest.raises(ValueError, match="16"):
        coarse_to_fine(index, pack_bits(np.zeros((2, 8), np.uint8)), f, lookup, k=2)
    with pytest.raises(ValueError, match="NaN"):
        coarse_to_fine(index, q, np.full((2, 3), np.nan), lookup, k=2)
    with pytest.raises(ValueError, match="feature_lookup"):
        coarse_to_fine(index, q, f, lambda ids: np.zeros((len(ids), 4)), k=2)
