"""MIHIndex specifics: the hash tables (not only the linear fallback) give flat's exact answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashsearch.codes import pack_bits
from hashsearch.index import FlatIndex, MIHIndex, create_index
from hashsearch.index.mih import substring_bounds, substring_values
from hashsearch.types import Codes


def clustered(g: np.random.Generator, n: int, n_bits: int, n_centres: int = 8, flips: int = 4) -> Codes:
    """Codes near a few centres: what learned codes look like, with many exact ties."""
    centres = g.integers(0, 2, (n_centres, n_bits))
    bits = centres[g.integers(0, n_centres, n)]
    flip = g.random(bits.shape) < flips / n_bits
    return pack_bits(bits ^ flip)


@pytest.fixture
def tables_only(monkeypatch):
    """Never fall back to the linear scan, so every answer comes from the tables."""
    monkeypatch.setattr(MIHIndex, "_budget", lambda self: 1 << 62)


def assert_same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


@pytest.mark.parametrize("n_bits, m", [(16, 1), (24, 2), (32, 3), (64, 4), (64, 5), (100, 7), (128, 8)])
@pytest.mark.parametrize("clustered_data", [True, False])
def test_tables_match_flat(tables_only, n_bits, m, clustered_data):
    g = np.random.default_rng(n_bits * 10 + m)
    n = 1500
    db = clustered(g, n, n_bits) if clustered_data else pack_bits(g.integers(0, 2, (n, n_bits)))
    ids = g.choice(10 * n, n, replace=False)
    queries = Codes(
        np.concatenate(
            [
                db.data[:5],
                (clustered(g, 5, n_bits) if clustered_data else pack_bits(g.integers(0, 2, (5, n_bits)))).data,
            ]
        ),
        n_bits,
    )
    flat, mih = FlatIndex(n_bits), MIHIndex(n_bits, n_substrings=m)
    flat.add(db, ids)
    mih.add(db, ids)
    for k in (1, 10, 100, n + 5):
        assert_same(mih.search(queries, k), flat.search(queries, k))
    for radius in (0, 1, 2, 5):
        a, b = mih.range_search(queries, radius), flat.range_search(queries, radius)
        np.testing.assert_array_equal(a.lims, b.lims)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.distances, b.distances)


def test_tail_and_rebuild(tables_only):
    """Rows added after a build are scanned as a tail, then folded into rebuilt tables."""
    g = np.random.default_rng(3)
    db = clustered(g, 4000, 32)
    flat, mih = FlatIndex(32), MIHIndex(32)
    flat.add(db[:3000])
    mih.add(db[:3000])
    q = clustered(g, 20, 32)
    assert_same(mih.search(q, 10), flat.search(q, 10))
    assert mih._tabled == 3000
    flat.add(db[3000:3100], np.arange(5000, 5100))
    mih.add(db[3000:3100], np.arange(5000, 5100))
    assert_same(mih.search(q, 10), flat.search(q, 10))
    assert mih._tabled == 3000, "a small tail is scanned, not re-indexed"
    rr_m, rr_f = mih.range_search(q, 3), flat.range_search(q, 3)
    np.testing.assert_array_equal(rr_m.ids, rr_f.ids)
    flat.add(db[3100:], np.arange(6000, 6900))
    mih.add(db[3100:], np.arange(6000, 6900))
    assert_same(mih.search(q, 10), flat.search(q, 10))
    assert mih._tabled == 4000
    gone = mih.ids[::3]
    assert mih.remove(gone) == flat.remove(gone)
    assert_same(mih.search(q, 50), flat.search(q, 50))


def test_substrings_cover_the_code():
    bounds = substring_bounds(10, 3)
    assert bounds.tolist() == [0, 4, 7, 10]
    bits = np.array([[1, 0, 0, 1, 1, 1, 0, 0, 0, 1]])
    assert substring_values(pack_bits(bits).data, 10, bounds).tolist() == [[0b1001, 0b110, 0b001]]


def test_parameters_checked():
    with pytest.raises(ValueError, match="n_substrings"):
        MIHIndex(64, n_substrings=2)  # 32-bit substrings: tables too large
    with pytest.raises(ValueError, match="n_substrings"):
        MIHIndex(8, n_substrings=9)
    assert create_index("mih", n_bits=64).n_substrings == 4


def test_save_load_maps_tables(tmp_path):
    g = np.random.default_rng(4)
    index = MIHIndex(64)
    index.add(clustered(g, 2000, 64))
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["backend"] == "mih" and meta["mih"]["tabled"] == 2000
    loaded = MIHIndex.load(tmp_path)
    assert isinstance(loaded._rows_tab, np.memmap) and isinstance(loaded._tcodes, np.memmap)
    q = clustered(g, 10, 64)
    assert_same(loaded.search(q, 10), index.search(q, 10))


def _write_npy(path, array):
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to the name
        np.save(f, array, allow_pickle=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _write_npy(p / "mih_offsets.i64", np.zeros((4, 65537), np.int64)), "bucket"),
        (lambda p: _write_npy(p / "mih_words.npy", np.zeros((4, 10), np.uint64)), "mih_words"),
        (lambda p: (p / "mih_rows.i32").unlink(), "mih tables"),
    ],
)
def test_damaged_tables_rejected(tmp_path, damage, message):
    index = MIHIndex(64)
    index.add(clustered(np.random.default_rng(5), 2000, 64))
    index.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(ValueError, match=message):
        MIHIndex.load(tmp_path)


def test_damaged_row_numbers_rejected_at_search(tmp_path):
    """Row numbers are checked as the kernels read them (opening reads no table)."""
    g = np.random.default_rng(5)
    index = MIHIndex(64)
    index.add(clustered(g, 2000, 64))
    index.save(tmp_path)
    _write_npy(tmp_path / "mih_rows.i32", np.full((4, 2000), 5000, np.int32))
    loaded = MIHIndex.load(tmp_path)
    with pytest.raises(ValueError, match="row number out of range"):
        loaded.search(clustered(g, 5, 64), 10)
    with pytest.raises(ValueError, match="row number out of range"):
        loaded.range_search(index.get_codes(np.arange(5)), 3)
