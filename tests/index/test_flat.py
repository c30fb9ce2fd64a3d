"""FlatIndex specifics: storage growth, memory-mapped loading, file validation, query blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hashsearch.index._scan as scan_module
from hashsearch.codes import pack_bits
from hashsearch.index import FlatIndex, create_index
from hashsearch.types import Codes


def random_codes(g: np.random.Generator, n: int, n_bits: int) -> Codes:
    return pack_bits(g.integers(0, 2, (n, n_bits)))


def reference_ids(queries: Codes, db: Codes, ids: np.ndarray, k: int) -> np.ndarray:
    q, d = queries.to_bits().astype(np.int64), db.to_bits().astype(np.int64)
    dist = (q[:, None] ^ d[None]).sum(2)
    return np.stack([ids[np.lexsort((ids, row))[:k]] for row in dist])


def test_create_index_builds_flat():
    index = create_index("flat", n_bits=64)
    assert isinstance(index, FlatIndex) and index.exact and index.name == "flat"
    assert repr(index) == "FlatIndex(n_bits=64, count=0)"


def test_growth_is_amortised_over_many_small_adds():
    g = np.random.default_rng(0)
    index = FlatIndex(n_bits=24)
    added, buffers = [], set()
    for _step in range(400):
        codes = random_codes(g, int(g.integers(1, 4)), 24)
        index.add(codes)
        added.append(codes.data)
        buffers.add(index._codes.__array_interface__["data"][0])
    db = Codes(np.concatenate(added), 24)
    assert len(index) == len(db) and index.ids.tolist() == list(range(len(db)))
    # Geometric growth: a handful of reallocations for ~800 entries, not one per add.
    assert len(buffers) <= 12
    q = random_codes(g, 5, 24)
    np.testing.assert_array_equal(index.search(q, 7).ids, reference_ids(q, db, np.arange(len(db)), 7))


def test_remove_keeps_storage_order_and_capacity():
    g = np.random.default_rng(1)
    db = random_codes(g, 10, 16)
    index = FlatIndex(16)
    index.add(db, np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]))
    capacity = index._codes.shape[0]
    assert index.remove(np.array([8, 5, 0, 42])) == 3
    assert index.ids.tolist() == [9, 7, 6, 4, 3, 2, 1]
    np.testing.assert_array_equal(index.get_codes(np.array([7, 1])).data, db.data[[2, 8]])
    assert index._codes.shape[0] == capacity, "remove compacts in place"


def test_ties_with_huge_ids():
    """Ordering by (distance, id) holds for ids near the int64 limit."""
    big = np.iinfo(np.int64).max - np.array([0, 5, 3, 1, 4, 2])
    codes = pack_bits(np.zeros((6, 8), np.uint8))
    index = FlatIndex(8)
    index.add(codes, big)
    res = index.search(codes[:1], 4)
    assert res.ids[0].tolist() == sorted(big.tolist())[:4]
    assert (res.distances == 0).all()


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_query_blocks_and_database_shards_give_the_same_answer(monkeypatch, n_threads):
    """The scan split over query blocks, or over database shards merged by key, is unchanged."""
    g = np.random.default_rng(2)
    bits = g.integers(0, 2, (4, 12))[g.integers(0, 4, 300)]  # many exact ties
    db = pack_bits(bits)
    ids = g.permutation(1000)[:300]
    index = FlatIndex(12, n_threads=n_threads)
    index.add(db, ids)
    q = random_codes(g, 9, 12)
    whole, rng_whole = index.search(q, 20), index.range_search(q, 3)
    monkeypatch.setattr(scan_module, "_BLOCKS_PER_THREAD", 10)  # one query per block
    blocked, rng_blocked = index.search(q, 20), index.range_search(q, 3)
    monkeypatch.setattr(scan_module, "_BLOCKS_PER_THREAD", 1000)  # too few queries: shards
    monkeypatch.setattr(scan_module, "_MIN_SHARD_ROWS", 7)
    sharded = index.search(q, 20)
    for other in (blocked, sharded):
        np.testing.assert_array_equal(other.ids, whole.ids)
        np.testing.assert_array_equal(other.distances, whole.distances)
    np.testing.assert_array_equal(rng_blocked.lims, rng_whole.lims)
    np.testing.assert_array_equal(rng_blocked.ids, rng_whole.ids)
    np.testing.assert_array_equal(whole.ids, reference_ids(q, db, ids, 20))


def test_n_threads_is_checked():
    with pytest.raises(ValueError, match="n_threads"):
        FlatIndex(8, n_threads=0)


def test_padding_bits_rejected():
    # The low 4 bits of byte 2 are padding for 12-bit codes: Codes itself refuses them.
    with pytest.raises(ValueError, match="padding"):
        Codes(np.array([[0xFF, 0xFF]], np.uint8), 12)


def test_ids_must_be_integers():
    index = FlatIndex(8)
    codes = pack_bits(np.zeros((2, 8), np.uint8))
    with pytest.raises(TypeError, match="integers"):
        index.add(codes, np.array([1.0, 2.0]))
    index.add(codes, [3, 4])  # a list of ints is fine
    assert index.ids.tolist() == [3, 4]
    assert index.remove(4) == 1


def test_saved_files(tmp_path):
    g = np.random.default_rng(3)
    index = FlatIndex(12)
    index.add(random_codes(g, 5, 12), np.array([4, 8, 15, 16, 23]))
    index.remove(np.array([23]))
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.u8", "ids.i64", "index.json"]
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["backend"] == "flat" and meta["n_bits"] == 12 and meta["count"] == 4
    assert meta["next_id"] == 24
    codes = np.load(tmp_path / "codes.u8", allow_pickle=False)
    assert codes.dtype == np.uint8 and codes.shape == (4, 2)
    assert np.load(tmp_path / "ids.i64", allow_pickle=False).tolist() == [4, 8, 15, 16]


@pytest.mark.parametrize("mmap", [True, False])
def test_load_then_add_and_remove_copies_on_write(tmp_path, mmap):
    g = np.random.default_rng(4)
    db = random_codes(g, 30, 20)
    index = FlatIndex(20)
    index.add(db)
    index.save(tmp_path)
    on_disk = (tmp_path / "codes.u8").read_bytes(), (tmp_path / "ids.i64").read_bytes()

    loaded = FlatIndex.load(tmp_path, mmap=mmap)
    if mmap:
        assert isinstance(loaded._codes, np.memmap) and not loaded._codes.flags.writeable
    extra = random_codes(g, 3, 20)
    assert loaded.add(extra).tolist() == [30, 31, 32]
    assert loaded.remove(np.array([0, 31])) == 2
    all_db, all_ids = Codes(np.concatenate([db.data, extra.data]), 20), np.arange(33)
    keep = ~np.isin(all_ids, [0, 31])
    q = random_codes(g, 4, 20)
    np.testing.assert_array_equal(loaded.search(q, 40).ids[:, :31], reference_ids(q, all_db[keep], all_ids[keep], 31))
    assert ((tmp_path / "codes.u8").read_bytes(), (tmp_path / "ids.i64").read_bytes()) == on_disk

    # A second loaded copy can remove first (copy on write through remove too).
    other = FlatIndex.load(tmp_path, mmap=mmap)
    assert other.remove(np.array([5])) == 1 and len(other) == 29
    assert ((tmp_path / "codes.u8").read_bytes(), (tmp_path / "ids.i64").read_bytes()) == on_disk


def test_save_into_the_folder_it_was_mapped_from(tmp_path):
    g = np.random.default_rng(5)
    index = FlatIndex(16)
    index.add(random_codes(g, 50, 16))
    index.save(tmp_path)
    loaded = FlatIndex.load(tmp_path)
    q = random_codes(g, 3, 16)
    before = loaded.search(q, 5)
    loaded.save(tmp_path)  # overwrites the files it maps; renames keep the mapping valid
    np.testing.assert_array_equal(loaded.search(q, 5).ids, before.ids)
    np.testing.assert_array_equal(FlatIndex.load(tmp_path).search(q, 5).ids, before.ids)


def test_save_needs_an_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FlatIndex(8).save(tmp_path / "missing")


@pytest.fixture
def saved(tmp_path):
    index = FlatIndex(12)
    index.add(random_codes(np.random.default_rng(6), 5, 12))
    index.save(tmp_path)
    return tmp_path


def _write_npy(path, array):
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _edit_meta(path, **changes):
    meta = json.loads((path / "index.json").read_text())
    meta.update(changes)
    (path / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _edit_meta(p, count=6), "codes.u8"),
        (lambda p: _edit_meta(p, n_bits=20), "codes.u8"),
        (lambda p: _edit_meta(p, backend="mih"), "mih"),
        (lambda p: _edit_meta(p, version=99), "version"),
        (lambda p: _edit_meta(p, n_bits="12"), "n_bits"),
        (lambda p: _edit_meta(p, next_id=2), "next_id"),
        (lambda p: (p / "index.json").write_text("{not json"), "index.json"),
        (lambda p: (p / "ids.i64").unlink(), "ids.i64"),
        (lambda p: (p / "codes.u8").write_bytes(b"garbage"), "codes.u8"),
        (lambda p: _write_npy(p / "ids.i64", np.arange(5, dtype=np.int32)), "int64"),
        (lambda p: _write_npy(p / "ids.i64", np.array([0, 1, 1, 2, 3])), "repeated"),
        (lambda p: _write_npy(p / "codes.u8", np.zeros((5, 2), np.int16)), "uint8"),
    ],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_load_rejects_damaged_files(saved, damage, message, mmap):
    """A damaged file is refused by `load`, or (the ids, read whole only when first needed, so
    that opening a large index reads only its headers) by the first search."""
    damage(saved)
    with pytest.raises(ValueError, match=message):
        index = FlatIndex.load(saved, mmap=mmap)
        index.search(Codes(np.zeros((1, (index.n_bits + 7) // 8), np.uint8), index.n_bits), 1)
