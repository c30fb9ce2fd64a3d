"""The Index contract, checked on every registered back end (see hashsearch.index.base.Index).

Each back end found by `list_indexes()` is tested here automatically, plus the faiss factory
variants in `FAISS_VARIANTS`; exact back ends (`exact` on an instance) must match a
brute-force reference exactly, ties (broken by id) included. Back ends whose optional
dependency is missing are skipped. Milvus runs on one Milvus Lite database shared by the
module, with collections recycled from a small pool (creating one takes ~0.5 s).
"""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashsearch.codes import pack_bits
from hashsearch.index import Index, create_index, index_backends, list_indexes
from hashsearch.types import MISSING_ID, Codes, RangeResult, SearchResult

FAISS_VARIANTS = ["faiss:BFlat", "faiss:BHNSW16", "faiss:BIVF4", "faiss:BHash1x8"]
_NEEDS = {"faiss": "faiss", "milvus": "pymilvus"}


def _available(name: str) -> bool:
    module = _NEEDS.get(name.split(":")[0])
    return module is None or importlib.util.find_spec(module) is not None


def _param(name: str):
    marks = [] if _available(name) else [pytest.mark.skip(reason=f"{_NEEDS[name.split(':')[0]]} is not installed")]
    if name.startswith("milvus"):
        marks.append(pytest.mark.milvus)
    return pytest.param(name, marks=marks, id=name)


_NAMES = [n for n in list_indexes() if n != "faiss"] + FAISS_VARIANTS
_MILVUS_DIR = tempfile.TemporaryDirectory(prefix="hashsearch-milvus-test-")
_pool = itertools.count()


def make_index(name: str, n_bits: int) -> Index:
    if name == "milvus":
        # Recycle a pool of collections per code width; "clear" empties one in milliseconds.
        slot = next(_pool) % 3
        return create_index(
            "milvus",
            n_bits=n_bits,
            uri=str(Path(_MILVUS_DIR.name) / "contract.db"),
            collection=f"pool_{(n_bits + 7) // 8}_{slot}",
            if_exists="clear",
        )
    return create_index(name, n_bits=n_bits)


def _is_exact(name: str) -> bool:
    if not _available(name):
        return True  # listed (and skipped) with the exact ones
    if name == "milvus":
        return index_backends.get("milvus").exact
    return make_index(name, 64).exact


BACKENDS = [_param(n) for n in _NAMES]
EXACT = [_param(n) for n in _NAMES if _is_exact(n)]

PROPERTY = settings(max_examples=25, deadline=None)


# -- data ----------------------------------------------------------------------------------
def random_codes(g: np.random.Generator, n: int, n_bits: int) -> Codes:
    return pack_bits(g.integers(0, 2, (n, n_bits)))


def clustered_codes(g: np.random.Generator, n: int, n_bits: int = 16, n_centres: int = 3) -> Codes:
    """Codes drawn from a few centres with 0-2 bits flipped: many exact ties in distance."""
    centres = g.integers(0, 2, (n_centres, n_bits))
    bits = centres[g.integers(0, n_centres, n)]
    for row in bits:
        row[g.choice(n_bits, size=g.integers(0, 3), replace=False)] ^= 1
    return pack_bits(bits)


def scattered_ids(g: np.random.Generator, n: int) -> np.ndarray:
    """Distinct ids in random order, so storage order differs from id order."""
    return g.choice(10 * n + 10, size=n, replace=False).astype(np.int64)


# -- brute-force reference ------------------------------------------------------------------
def reference_distances(queries: Codes, db: Codes) -> np.ndarray:
    q, d = queries.to_bits().astype(np.int64), db.to_bits().astype(np.int64)
    return (q[:, None, :] ^ d[None, :, :]).sum(axis=2)


def reference_search(queries: Codes, db: Codes, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = reference_distances(queries, db)
    out_d = np.full((len(queries), k), -1, np.int64)
    out_i = np.full((len(queries), k), MISSING_ID, np.int64)
    for qi in range(len(queries)):
        order = np.lexsort((ids, dist[qi]))[:k]
        out_d[qi, : len(order)] = dist[qi, order]
        out_i[qi, : len(order)] = ids[order]
    return out_d, out_i


def reference_range(queries: Codes, db: Codes, ids: np.ndarray, radius: int) -> list[list[tuple[int, int]]]:
    dist = reference_distances(queries, db)
    return [
        sorted((int(dist[qi, j]), int(ids[j])) for j in range(len(ids)) if dist[qi, j] <= radius)
        for qi in range(len(queries))
    ]


def range_as_lists(result: RangeResult) -> list[list[tuple[int, int]]]:
    out = []
    for qi in range(len(result)):
        d, i = result.query(qi)
        out.append(list(zip(d.tolist(), i.tolist())))
    return out


def assert_search_equal(result: SearchResult, expected: tuple[np.ndarray, np.ndarray]) -> None:
    exp_d, exp_i = expected
    assert result.ids.shape == exp_i.shape and result.distances.shape == exp_d.shape
    np.testing.assert_array_equal(result.ids, exp_i)
    np.testing.assert_array_equal(result.distances, exp_d)


def assert_same_search(a: SearchResult, b: SearchResult) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


def build(name: str, db: Codes, ids: np.ndarray | None) -> Index:
    index = make_index(name, db.n_bits)
    index.add(db, ids)
    return index


# -- exact search ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXACT)
@PROPERTY
@given(
    n_bits=st.sampled_from([1, 7, 8, 12, 16, 33, 64, 65, 100]),
    n=st.integers(0, 60),
    nq=st.integers(1, 5),
    k=st.sampled_from([1, 3, 10, 100]),
    explicit_ids=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_matches_reference_on_random_codes(name, n_bits, n, nq, k, explicit_ids, seed):
    g = np.random.default_rng(seed)
    db, queries = random_codes(g, n, n_bits), random_codes(g, nq, n_bits)
    ids = scattered_ids(g, n) if explicit_ids else np.arange(n)
    index = build(name, db, ids if explicit_ids else None)
    assert_search_equal(index.search(queries, k), reference_search(queries, db, ids, k))


@pytest.mark.parametrize("name", EXACT)
@PROPERTY
@given(
    n=st.integers(1, 80),
    k=st.sampled_from([1, 2, 5, 10, 40, 200]),
    n_centres=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_matches_reference_with_many_ties(name, n, k, n_centres, seed):
    g = np.random.default_rng(seed)
    db = clustered_codes(g, n, 16, n_centres)
    queries = Codes(np.concatenate([db.data[:3], clustered_codes(g, 3, 16, n_centres).data]), 16)
    ids = scattered_ids(g, n)
    index = build(name, db, ids)
    assert_search_equal(index.search(queries, k), reference_search(queries, db, ids, k))


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("k", [1, 37, 500, 3000])
@pytest.mark.parametrize("n_bits", [16, 100])
@pytest.mark.parametrize("ascending_ids", [False, True])
def test_search_matches_reference_on_a_larger_index_with_ties(name, k, n_bits, ascending_ids):
    """Thousands of entries at a few distances: the k-th distance is shared by many ids.

    Ids added in ascending order take the scan's shortcut (a later row loses every tie);
    scattered ids do not.
    """
    g = np.random.default_rng(k)
    db = clustered_codes(g, 2500, n_bits, n_centres=5)
    queries = Codes(np.concatenate([db.data[:4], clustered_codes(g, 4, n_bits, 5).data]), n_bits)
    ids = np.arange(2500) if ascending_ids else scattered_ids(g, 2500)
    index = build(name, db, ids)
    assert_search_equal(index.search(queries, k), reference_search(queries, db, ids, k))


@pytest.mark.parametrize("name", EXACT)
@PROPERTY
@given(
    n_bits=st.sampled_from([8, 12, 16, 20]),
    n=st.integers(0, 60),
    clustered=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_range_search_matches_reference(name, n_bits, n, clustered, seed):
    g = np.random.default_rng(seed)
    make = (lambda m: clustered_codes(g, m, n_bits)) if clustered else (lambda m: random_codes(g, m, n_bits))
    db, queries = make(n), make(4)
    ids = scattered_ids(g, n)
    index = build(name, db, ids)
    for radius in range(4):
        result = index.range_search(queries, radius)
        assert result.lims.shape == (len(queries) + 1,) and result.lims[0] == 0
        assert len(result.ids) == len(result.distances) == result.lims[-1]
        assert range_as_lists(result) == reference_range(queries, db, ids, radius)


@pytest.mark.parametrize("name", BACKENDS)
def test_result_types_and_shapes(name):
    g = np.random.default_rng(0)
    index = build(name, random_codes(g, 20, 24), None)
    res = index.search(random_codes(g, 3, 24), 5)
    assert isinstance(res, SearchResult)
    assert res.ids.shape == res.distances.shape == (3, 5)
    assert np.issubdtype(res.ids.dtype, np.integer) and np.issubdtype(res.distances.dtype, np.integer)
    assert isinstance(index.range_search(random_codes(g, 3, 24), 2), RangeResult)
    assert index.search(random_codes(g, 0, 24), 4).ids.shape == (0, 4)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("k", [1, 10])
def test_empty_index_returns_missing(name, k):
    index = make_index(name, 32)
    queries = random_codes(np.random.default_rng(0), 3, 32)
    res = index.search(queries, k)
    assert len(index) == 0
    assert (res.ids == MISSING_ID).all() and (res.distances == -1).all()
    assert res.ids.shape == (3, k)
    rr = index.range_search(queries, 32)
    assert rr.lims.tolist() == [0, 0, 0, 0] and len(rr.ids) == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_k_larger_than_index(name):
    g = np.random.default_rng(1)
    db = random_codes(g, 4, 16)
    index = build(name, db, np.array([7, 3, 9, 1]))
    res = index.search(random_codes(g, 2, 16), 10)
    assert res.ids.shape == (2, 10)
    assert (res.ids[:, 4:] == MISSING_ID).all() and (res.distances[:, 4:] == -1).all()
    for row in res.ids:
        if index.exact:
            assert sorted(row[:4].tolist()) == [1, 3, 7, 9]
        else:  # an approximate index may miss some, but returns no others, found ones first
            found = row[row != MISSING_ID].tolist()
            assert set(found) <= {1, 3, 7, 9} and (row[len(found) :] == MISSING_ID).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_rejects_bad_k_and_radius(name):
    index = build(name, random_codes(np.random.default_rng(0), 5, 16), None)
    q = random_codes(np.random.default_rng(1), 1, 16)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k"):
            index.search(q, k)
    with pytest.raises(ValueError, match="radius"):
        index.range_search(q, -1)


# -- ids, add, remove -------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_add_assigns_ids_after_the_largest_ever_used(name):
    g = np.random.default_rng(2)
    index = make_index(name, 16)
    assert index.add(random_codes(g, 3, 16)).tolist() == [0, 1, 2]
    assert index.add(random_codes(g, 2, 16), np.array([10, 5])).tolist() == [10, 5]
    assert index.add(random_codes(g, 2, 16)).tolist() == [11, 12]
    assert index.add(random_codes(g, 1, 16), np.array([7])).tolist() == [7]
    assert index.add(random_codes(g, 1, 16)).tolist() == [13], "a smaller explicit id does not lower the next"
    assert index.remove(np.array([12, 11])) == 2
    assert index.remove(np.array([13])) == 1
    assert index.add(random_codes(g, 1, 16)).tolist() == [14], "removed ids are not reused"
    assert sorted(index.ids.tolist()) == [0, 1, 2, 5, 7, 10, 14]
    assert len(index) == 7
    assert index.add(random_codes(g, 0, 16)).tolist() == []


@pytest.mark.parametrize("name", BACKENDS)
def test_add_with_explicit_ids_and_get_codes(name):
    g = np.random.default_rng(3)
    db = random_codes(g, 6, 20)
    ids = np.array([40, 2, 17, 8, 33, 5])
    index = build(name, db, ids)
    assert sorted(index.ids.tolist()) == sorted(ids.tolist())
    got = index.get_codes(np.array([17, 40, 5]))
    np.testing.assert_array_equal(got.data, db.data[[2, 0, 5]])
    assert got.n_bits == 20
    with pytest.raises(KeyError, match="41"):
        index.get_codes(np.array([40, 41]))
    # Each entry is its own nearest neighbour at distance 0 (ties resolved by id).
    res = index.search(db, 1)
    assert (res.distances[:, 0] == 0).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_duplicate_and_negative_ids_rejected(name):
    g = np.random.default_rng(4)
    index = build(name, random_codes(g, 3, 16), np.array([1, 2, 3]))
    queries = random_codes(g, 2, 16)
    before = index.search(queries, 3)
    with pytest.raises(ValueError, match="2"):
        index.add(random_codes(g, 2, 16), np.array([9, 2]))  # 2 already present
    with pytest.raises(ValueError, match="7"):
        index.add(random_codes(g, 3, 16), np.array([7, 8, 7]))  # 7 twice in one call
    with pytest.raises(ValueError, match="non-negative"):
        index.add(random_codes(g, 1, 16), np.array([-4]))
    with pytest.raises(ValueError):
        index.add(random_codes(g, 2, 16), np.array([20]))  # one id for two codes
    assert len(index) == 3 and sorted(index.ids.tolist()) == [1, 2, 3], "a failed add changes nothing"
    assert_same_search(index.search(queries, 3), before)


@pytest.mark.parametrize("name", BACKENDS)
def test_wrong_n_bits_rejected(name):
    g = np.random.default_rng(5)
    index = build(name, random_codes(g, 3, 16), None)
    with pytest.raises(ValueError, match="16"):
        index.add(random_codes(g, 2, 12))
    with pytest.raises(ValueError, match="16"):
        index.search(random_codes(g, 1, 24), 1)
    with pytest.raises(ValueError, match="16"):
        index.range_search(random_codes(g, 1, 8), 1)
    with pytest.raises(TypeError):
        index.add(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="n_bits"):
        make_index(name, 0)
    assert len(index) == 3


@pytest.mark.parametrize("name", EXACT)
@PROPERTY
@given(n=st.integers(1, 60), clustered=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_remove(name, n, clustered, seed):
    g = np.random.default_rng(seed)
    db = clustered_codes(g, n) if clustered else random_codes(g, n, 16)
    ids = scattered_ids(g, n)
    index = build(name, db, ids)
    gone = g.random(n) < 0.4
    unknown = np.array([10 * n + 11, 10 * n + 50])  # never added: ignored
    assert index.remove(np.concatenate([ids[gone], unknown])) == gone.sum()
    assert index.remove(ids[gone]) == 0, "removing twice removes nothing"
    assert len(index) == n - gone.sum()
    assert sorted(index.ids.tolist()) == sorted(ids[~gone].tolist())
    queries = random_codes(g, 4, 16)
    res = index.search(queries, n + 2)
    assert not np.isin(res.ids, ids[gone]).any()
    assert_search_equal(res, reference_search(queries, db[~gone], ids[~gone], n + 2))
    assert range_as_lists(index.range_search(queries, 3)) == reference_range(queries, db[~gone], ids[~gone], 3)
    with pytest.raises(KeyError):
        index.get_codes(ids[gone][:1]) if gone.any() else index.get_codes(unknown[:1])


# -- persistence ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 57])
def test_save_load_round_trip(name, n, tmp_path):
    g = np.random.default_rng(6)
    db = clustered_codes(g, n, 16)
    index = build(name, db, scattered_ids(g, n))
    index.save(tmp_path)
    loaded = type(index).load(tmp_path)
    assert type(loaded) is type(index) and loaded.n_bits == 16 and len(loaded) == n
    np.testing.assert_array_equal(np.sort(loaded.ids), np.sort(index.ids))
    queries = clustered_codes(g, 5, 16)
    for k in (1, 10, n + 3):
        assert_same_search(loaded.search(queries, k), index.search(queries, k))
    assert range_as_lists(loaded.range_search(queries, 2)) == range_as_lists(index.range_search(queries, 2))
    # Still a working index: the next automatic id continues after the saved ones.
    new = loaded.add(random_codes(g, 2, 16))
    assert new.tolist() == index.add(random_codes(g, 2, 16)).tolist()
    assert loaded.remove(new) == 2 and len(loaded) == n


@pytest.mark.parametrize("name", BACKENDS)
def test_registry(name):
    cls = index_backends.get(name.split(":")[0])  # "faiss:<factory>" is the "faiss" back end
    assert cls.name == name.split(":")[0] and issubclass(cls, Index)
    index = make_index(name, 8)
    assert isinstance(index, cls) and index.n_bits == 8
    with pytest.raises(ValueError, match="unknown index back end"):
        create_index("no-such-index", n_bits=8)


def test_exact_back_ends():
    exact = [p.values[0] for p in EXACT]
    assert {"flat", "mih", "faiss:BFlat", "milvus"} <= set(exact)
    assert not {"faiss:BHNSW16", "faiss:BIVF4", "faiss:BHash1x8"} & set(exact)


def test_faiss_factory_string():
    pytest.importorskip("faiss")
    index = create_index("faiss:BHNSW32", n_bits=64)
    assert index.name == "faiss" and index.factory == "BHNSW32" and not index.exact
    with pytest.raises(ValueError, match="factory"):
        create_index("faiss:NoSuchThing", n_bits=64)
    with pytest.raises(ValueError, match="once"):
        create_index("faiss:BFlat", n_bits=64, factory="BFlat")
