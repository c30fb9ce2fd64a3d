"""Bit packing, the Codes container's checks, and the Hamming kernel against a naive count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hashsearch.codes as codes_module
from hashsearch.codes import hamming_distances, pack_bits, unpack_bits
from hashsearch.types import Codes

N_BITS = st.sampled_from([1, 7, 8, 12, 16, 33, 48, 63, 64, 65, 100, 128])


def random_bits(seed: int, n: int, n_bits: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (n, n_bits), dtype=np.uint8)


def naive_hamming(q_bits: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """Popcount of XOR over unpacked bits, one pair at a time."""
    out = np.zeros((len(q_bits), len(d_bits)), np.int64)
    for i, a in enumerate(q_bits):
        for j, b in enumerate(d_bits):
            out[i, j] = int(np.sum(a != b))
    return out


@settings(max_examples=60, deadline=None)
@given(n_bits=N_BITS, n=st.integers(0, 20), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(n_bits, n, seed):
    bits = random_bits(seed, n, n_bits)
    codes = pack_bits(bits)
    assert codes.n_bits == n_bits
    assert codes.data.dtype == np.uint8 and codes.data.shape == (n, (n_bits + 7) // 8)
    np.testing.assert_array_equal(unpack_bits(codes), bits)
    np.testing.assert_array_equal(Codes.from_bits(bits.astype(bool)).to_bits(), bits)
    if n_bits % 8 and n:
        spare = (1 << (8 - n_bits % 8)) - 1
        assert not (codes.data[:, -1] & spare).any(), "padding bits must be 0"


def test_pack_is_msb_first():
    codes = pack_bits(np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1]]))
    assert codes.data.tolist() == [[0b10000000, 0b11000000]]


def test_codes_indexing_keeps_two_dimensions():
    codes = pack_bits(random_bits(0, 5, 12))
    assert codes[2].data.shape == (1, 2)
    assert codes[1:4].data.shape == (3, 2) and codes[1:4].n_bits == 12
    assert len(codes[np.array([True, False, True, False, False])]) == 2


@pytest.mark.parametrize(
    "data, n_bits, error",
    [
        ([[1, 2]], 16, TypeError),  # not an ndarray
        (np.zeros((2, 2), np.int32), 16, TypeError),  # wrong dtype
        (np.zeros(4, np.uint8), 16, TypeError),  # 1-d
        (np.zeros((2, 3), np.uint8), 16, ValueError),  # 3 bytes for 16 bits
        (np.zeros((2, 1), np.uint8), 12, ValueError),  # 1 byte for 12 bits
        (np.zeros((2, 0), np.uint8), 0, ValueError),  # n_bits must be positive
    ],
)
def test_codes_validation(data, n_bits, error):
    with pytest.raises(error):
        Codes(data, n_bits)


def test_pack_bits_validation():
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_bits(np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="0 and 1"):
        pack_bits(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        pack_bits(np.array([0, 1, 1]))


@settings(max_examples=60, deadline=None)
@given(n_bits=N_BITS, nq=st.integers(0, 6), nd=st.integers(0, 25), seed=st.integers(0, 2**32 - 1))
def test_hamming_matches_naive_popcount(n_bits, nq, nd, seed):
    q_bits = random_bits(seed, nq, n_bits)
    d_bits = random_bits(seed + 1, nd, n_bits)
    got = hamming_distances(pack_bits(q_bits), pack_bits(d_bits))
    assert got.dtype == np.int32 and got.shape == (nq, nd)
    np.testing.assert_array_equal(got, naive_hamming(q_bits, d_bits))


def test_hamming_blocks_agree(monkeypatch):
    """Several query blocks give the same matrix as one."""
    q, d = pack_bits(random_bits(1, 40, 65)), pack_bits(random_bits(2, 30, 65))
    whole = hamming_distances(q, d)
    monkeypatch.setattr(codes_module, "_BLOCK_BYTES", 1)  # one query per block
    np.testing.assert_array_equal(hamming_distances(q, d), whole)
    np.testing.assert_array_equal(whole, naive_hamming(q.to_bits(), d.to_bits()))


def test_hamming_extremes():
    ones, zeros = pack_bits(np.ones((1, 65), np.uint8)), pack_bits(np.zeros((1, 65), np.uint8))
    assert hamming_distances(ones, zeros).tolist() == [[65]]
    assert hamming_distances(ones, ones).tolist() == [[0]]


def test_hamming_rejects_different_lengths():
    with pytest.raises(ValueError, match="bits"):
        hamming_distances(pack_bits(random_bits(0, 2, 16)), pack_bits(random_bits(0, 2, 12)))
