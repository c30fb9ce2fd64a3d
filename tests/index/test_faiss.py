"""faiss back end specifics: factory strings, tie completion, training, tombstones, recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from hashsearch.codes import pack_bits
from hashsearch.index import FlatIndex, create_index
from hashsearch.index.faiss_backend import FaissIndex
from hashsearch.types import Codes


def clustered(g, n, n_bits=64, n_centres=20):
    centres = g.integers(0, 2, (n_centres, n_bits))
    bits = centres[g.integers(0, n_centres, n)] ^ (g.random((n, n_bits)) < 0.05)
    return pack_bits(bits)


def test_bflat_ties_past_k_plus_one_are_ordered_by_id():
    codes = Codes(np.zeros((300, 8), np.uint8), 64)
    ids = np.random.default_rng(0).permutation(3000)[:300]
    index = create_index("faiss:BFlat", n_bits=64)
    index.add(codes, ids)
    res = index.search(codes[:3], 9)
    assert (res.ids == np.sort(ids)[:9]).all()


def test_ivf_trains_when_it_has_enough_codes():
    g = np.random.default_rng(1)
    db = clustered(g, 1000)
    index = create_index("faiss:BIVF8", n_bits=64, nprobe=8, train_size=400)
    index.add(db[:300])
    assert not index.faiss_index.is_trained  # searched exactly from the kept codes until then
    flat = FlatIndex(64)
    flat.add(db[:300])
    q = db[:5]
    np.testing.assert_array_equal(index.search(q, 10).ids, flat.search(q, 10).ids)
    index.add(db[300:])
    assert index.faiss_index.is_trained and index.faiss_index.ntotal == 1000
    flat.add(db[300:])
    # nprobe = nlist: every list is probed, so the IVF answer is exact here.
    np.testing.assert_array_equal(index.search(q, 10).distances, flat.search(q, 10).distances)


@pytest.mark.parametrize("factory", ["BHNSW16", "BHash2x16"])
def test_tombstones_and_readding(factory):
    g = np.random.default_rng(2)
    db = clustered(g, 500)
    index = create_index(f"faiss:{factory}", n_bits=64)
    index.add(db)
    gone = np.arange(0, 500, 2)
    assert index.remove(gone) == 250
    res = index.search(db[:20], 10)
    assert not np.isin(res.ids, gone).any()
    assert len(index._dead) == 250  # no remove_ids in faiss for these: tombstones
    index.add(db[:1], np.array([0]))  # a tombstoned id comes back: faiss is refilled
    assert len(index._dead) == 0 and index.faiss_index.ntotal == 251
    assert index.search(db[:1], 1).ids[0, 0] == 0


def test_hnsw_recall_is_high_on_clustered_codes():
    g = np.random.default_rng(3)
    db = clustered(g, 3000)
    q = db[::60]
    hnsw = create_index("faiss:BHNSW32", n_bits=64, ef_search=64)
    flat = FlatIndex(64)
    hnsw.add(db)
    flat.add(db)
    a, b = hnsw.search(q, 10), flat.search(q, 10)
    # Same k-th distances: any difference is among equal-distance ties or a rare miss.
    assert np.mean(a.distances[:, -1] == b.distances[:, -1]) > 0.9


def test_bad_factory_and_params():
    with pytest.raises(ValueError, match="IDMap"):
        FaissIndex(64, factory="IDMap2,BFlat")
    with pytest.raises(ValueError, match="nprobe"):
        FaissIndex(64, factory="BIVF4", nprobe=0)


def test_save_load_keeps_tombstones(tmp_path):
    g = np.random.default_rng(4)
    db = clustered(g, 200)
    index = create_index("faiss:BHNSW16", n_bits=64)
    index.add(db)
    index.remove(np.arange(50))
    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert loaded.factory == "BHNSW16" and len(loaded._dead) == 50 and len(loaded) == 150
    np.testing.assert_array_equal(loaded.search(db[:5], 5).ids, index.search(db[:5], 5).ids)
    (tmp_path / "faiss.index").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged"):
        FaissIndex.load(tmp_path)
    # index.json without its code length (a hand-edited or cut file): a clear error, not a TypeError.
    meta = json.loads((tmp_path / "index.json").read_text())
    del meta["n_bits"]
    (tmp_path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has no code length or factory string: damaged; build the index again"):
        FaissIndex.load(tmp_path)
