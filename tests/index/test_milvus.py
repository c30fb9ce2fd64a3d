"""Milvus back end specifics against Milvus Lite: bit order, tie completion, limits, reopening."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from hashsearch.codes import hamming_distances, pack_bits
from hashsearch.index import FlatIndex, create_index
from hashsearch.index.milvus_backend import TOPK_LIMIT, MilvusIndex
from hashsearch.types import Codes

pytestmark = pytest.mark.milvus


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One Milvus Lite database (one embedded server) for the module."""
    return str(tmp_path_factory.mktemp("milvus") / "test.db")


def test_bit_order_agrees_with_our_packing(uri):
    """Single-bit codes: Milvus's distances and stored bytes match ours bit for bit."""
    n_bits = 20  # not a multiple of 8: padding bits must stay zero on both sides
    one_hot = pack_bits(np.eye(n_bits, dtype=np.uint8))
    index = create_index("milvus", n_bits=n_bits, uri=uri)
    index.add(one_hot)
    np.testing.assert_array_equal(index.fetch_codes(np.arange(n_bits)).data, one_hot.data)
    # Query with bits 0 and 5 set: entries 0 and 5 are at distance 1, every other at 3.
    q = pack_bits(np.isin(np.arange(n_bits), [0, 5]).astype(np.uint8)[None])
    res = index.search(q, n_bits)
    assert res.ids[0, :2].tolist() == [0, 5] and res.distances[0, :2].tolist() == [1, 1]
    assert (res.distances[0, 2:] == 3).all() and res.ids[0, 2:].tolist() == sorted(set(range(n_bits)) - {0, 5})
    # Random codes: Milvus's HAMMING distances equal hashsearch.codes.hamming_distances.
    g = np.random.default_rng(0)
    db, qs = pack_bits(g.integers(0, 2, (300, 64))), pack_bits(g.integers(0, 2, (4, 64)))
    other = create_index("milvus", n_bits=64, uri=uri)
    other.add(db)
    res = other.search(qs, 300)
    expected = np.sort(hamming_distances(qs, db), axis=1)
    np.testing.assert_array_equal(res.distances, expected)


def test_ties_beyond_k_plus_one_are_ordered_by_id(uri):
    """Hundreds of identical codes: the answer is the k smallest ids, not Milvus's pick."""
    codes = Codes(np.zeros((500, 2), np.uint8), 16)
    ids = np.random.default_rng(1).permutation(5000)[:500]
    index = create_index("milvus", n_bits=16, uri=uri)
    index.add(codes, ids)
    res = index.search(codes[:2], 7)
    assert (res.ids == np.sort(ids)[:7]).all() and (res.distances == 0).all()


def test_topk_limit_is_a_clear_error(uri, monkeypatch):
    index = create_index("milvus", n_bits=8, uri=uri)
    index.add(pack_bits(np.random.default_rng(2).integers(0, 2, (40, 8))))
    import hashsearch.index.milvus_backend as mb

    monkeypatch.setattr(mb, "TOPK_LIMIT", 10)
    with pytest.raises(ValueError, match="at most"):
        index.search(index.get_codes(index.ids[:1]), 20)
    with pytest.raises(ValueError, match="Milvus"):
        index.range_search(index.get_codes(index.ids[:1]), 8)
    assert TOPK_LIMIT == 16384


def test_existing_collection(uri):
    a = create_index("milvus", n_bits=16, uri=uri, collection="taken")
    a.add(pack_bits(np.ones((3, 16), np.uint8)))
    with pytest.raises(ValueError, match="already exists"):
        create_index("milvus", n_bits=16, uri=uri, collection="taken")
    with pytest.raises(ValueError, match="dim"):
        create_index("milvus", n_bits=32, uri=uri, collection="taken", if_exists="clear")
    b = create_index("milvus", n_bits=16, uri=uri, collection="taken", if_exists="clear")
    assert len(b) == 0 and b.search(pack_bits(np.ones((1, 16), np.uint8)), 2).ids.tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="index_type"):
        create_index("milvus", n_bits=16, uri=uri, index_type="HNSW")


def test_default_lite_database_and_reopen(tmp_path):
    """No uri: a temporary Milvus Lite database; the saved index reopens in its own folder."""
    g = np.random.default_rng(3)
    db = pack_bits(g.integers(0, 2, (50, 24)))
    index = MilvusIndex(24)
    index.add(db)
    q = db[:3]
    before = index.search(q, 5)
    index.save(tmp_path)
    index.close()
    loaded = MilvusIndex.load(tmp_path)
    assert (tmp_path / "milvus.db").exists() and len(loaded) == 50
    np.testing.assert_array_equal(loaded.search(q, 5).ids, before.ids)
    loaded.remove(np.array([0]))
    loaded.save(tmp_path)
    again = MilvusIndex.load(tmp_path)  # the collection is already in milvus.db now
    ref = FlatIndex(24)
    ref.add(db[1:], np.arange(1, 50))
    np.testing.assert_array_equal(again.search(q, 5).ids, ref.search(q, 5).ids)


def test_a_token_comes_from_the_environment_when_not_given(uri, monkeypatch, tmp_path):
    """Collection.open passes no back-end options: a server's token reaches the reopened index
    through HASHSEARCH_MILVUS_TOKEN (and is never written into the saved index)."""
    monkeypatch.setenv("HASHSEARCH_MILVUS_TOKEN", "root:Milvus")
    index = create_index("milvus", n_bits=16, uri=uri)
    index.add(pack_bits(np.eye(16, dtype=np.uint8)))
    index.save(tmp_path)
    assert index._token == "root:Milvus" and "root:Milvus" not in "".join(
        p.read_text(errors="ignore") for p in tmp_path.rglob("*.json")
    )
    back = MilvusIndex.load(tmp_path)
    assert back._token == "root:Milvus" and len(back) == 16
    assert MilvusIndex.load(tmp_path, token="other")._token == "other"
