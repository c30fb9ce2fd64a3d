"""Checks every registered hasher must pass (a new hasher is picked up from the registry)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashsearch.codes import hamming_distances
from hashsearch.hashing import NotFittedError, create_hasher, list_hashers
from hashsearch.hashing.base import Hasher
from hashsearch.types import Codes

NAMES = list_hashers()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(name: str, **params) -> Hasher:
    """The hasher `name`, with deep training kept short so the suite stays fast."""
    hasher = create_hasher(name, **params)
    if "epochs" in hasher.get_params() and "epochs" not in params:
        hasher = create_hasher(name, **params, epochs=5)
    return hasher


def fit(hasher: Hasher, X, y) -> Hasher:
    return hasher.fit(X, y if hasher.supervised else None)


def hamming_map(query: Codes, database: Codes, yq: np.ndarray, yd: np.ndarray) -> float:
    """Mean average precision of Hamming ranking (ties broken by database index), over the whole database."""
    D = hamming_distances(query, database)
    aps = []
    for i in range(len(D)):
        rel = yd[np.argsort(D[i], kind="stable")] == yq[i]
        if rel.any():
            ranks = np.flatnonzero(rel) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def test_hamming_map_helper_on_a_hand_computed_case():
    db = Codes.from_bits(np.array([[0, 0], [1, 1], [0, 1]]))
    q = Codes.from_bits(np.array([[0, 0]]))
    # ranking: id0 (d0), id2 (d1), id1 (d2); relevant ids 0 and 1 -> AP = (1/1 + 2/3) / 2
    assert hamming_map(q, db, np.array([1]), np.array([1, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)


def test_registry_lists_the_built_in_hashers():
    assert {"lsh", "pcah", "pca-rr", "itq", "dlbhc"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_only_stores_params(name):
    hasher = create_hasher(name)
    assert not [k for k in vars(hasher) if k.endswith("_")]
    params = hasher.get_params()
    assert {"n_bits", "seed"} <= set(params)
    json.dumps(params)  # saved in the file's JSON header
    assert create_hasher(name, **params).get_params() == params


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_encode_gives_packed_codes(name, clustered):
    X, y = clustered
    hasher = make(name, n_bits=16)
    X_before = X.copy()
    assert fit(hasher, X, y) is hasher
    np.testing.assert_array_equal(X, X_before)  # fit does not modify its input
    codes = hasher.encode(X)
    assert isinstance(codes, Codes)
    assert codes.n_bits == 16
    assert codes.data.shape == (len(X), 2)
    assert codes.data.dtype == np.uint8
    empty = hasher.encode(X[:0])
    assert empty.data.shape == (0, 2) and empty.n_bits == 16
    # float64 input is accepted too
    assert hasher.encode(X.astype(np.float64)).data.shape == (len(X), 2)


@pytest.mark.parametrize("name", NAMES)
def test_encode_and_save_before_fit_raise(name, clustered, tmp_path):
    X, _ = clustered
    hasher = make(name, n_bits=16)
    with pytest.raises(NotFittedError):
        hasher.encode(X)
    with pytest.raises(NotFittedError):
        hasher.save(tmp_path / "h.npz")


@pytest.mark.parametrize("name", NAMES)
def test_wrong_feature_dimension_raises(name, clustered):
    X, y = clustered
    hasher = fit(make(name, n_bits=16), X, y)
    with pytest.raises(ValueError, match="dimensions"):
        hasher.encode(X[:, :-1])
    with pytest.raises(ValueError):
        hasher.encode(X[0])  # 1-d


@pytest.mark.parametrize("name", NAMES)
def test_supervised_hashers_require_labels(name, clustered):
    X, _ = clustered
    hasher = make(name, n_bits=16)
    if not hasher.supervised:
        pytest.skip("unsupervised")
    with pytest.raises(ValueError, match="labels"):
        hasher.fit(X)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, clustered, tmp_path):
    X, y = clustered
    hasher = fit(make(name, n_bits=16, seed=3), X, y)
    path = tmp_path / f"{name}.npz"
    hasher.save(path)
    loaded = Hasher.load(path)
    assert type(loaded) is type(hasher)
    assert loaded.get_params() == hasher.get_params()
    assert loaded.n_features_in_ == hasher.n_features_in_
    state, back = hasher._get_state(), loaded._get_state()
    assert state.keys() == back.keys() and (state or not hasher._state_names)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    a, b = hasher.encode(X), loaded.encode(X)
    assert a.n_bits == b.n_bits
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("name", NAMES)
def test_load_rejects_a_damaged_file(name, clustered, tmp_path):
    X, y = clustered
    path = tmp_path / "h.npz"
    fit(make(name, n_bits=8), X, y).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError):
        Hasher.load(path)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_same_codes(name, clustered):
    X, y = clustered
    a = fit(make(name, n_bits=16, seed=7), X, y).encode(X)
    b = fit(make(name, n_bits=16, seed=7), X, y).encode(X)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("name", NAMES)
def test_n_bits_not_a_multiple_of_8(name, clustered):
    X, y = clustered
    hasher = fit(make(name, n_bits=12), X, y)
    codes = hasher.encode(X)
    assert codes.n_bits == 12 and codes.data.shape == (len(X), 2)
    assert not (codes.data[:, 1] & 0x0F).any()  # padding bits stay 0
    bits = codes.to_bits()
    assert bits.shape == (len(X), 12)
    assert 0 < bits.mean() < 1


@pytest.mark.parametrize("name", NAMES)
def test_retrieval_well_above_chance(name, clustered):
    X, y = clustered
    Xq, yq, Xd, yd = X[:100], y[:100], X[100:], y[100:]
    hasher = fit(make(name, n_bits=16), Xd, yd)
    score = hamming_map(hasher.encode(Xq), hasher.encode(Xd), yq, yd)
    chance = float(np.mean([np.mean(yd == c) for c in yq]))
    assert chance < 0.2
    assert score > 0.5, f"{name}: mAP {score:.3f} vs chance {chance:.3f}"
