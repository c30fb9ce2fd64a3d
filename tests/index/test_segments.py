"""SegmentedIndex: segments + tail + tombstones answer exactly as one index of the live entries."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.codes import pack_bits
from hashsearch.index import FlatIndex, MIHIndex
from hashsearch.index.segments import SegmentedIndex


def _codes(g, n, bits=32):
    # Few distinct bits, so that many entries tie at the same distance (ties by id are checked).
    return pack_bits(g.integers(0, 2, (n, bits)).astype(np.uint8) & g.integers(0, 2, (n, bits)).astype(np.uint8))


@pytest.mark.parametrize("backend", [FlatIndex, MIHIndex])
def test_segments_tail_and_tombstones_answer_as_one_index(backend):
    g = np.random.default_rng(0)
    segments, ref = [], FlatIndex(32)
    start = 0
    for n in (3000, 200, 50):
        seg = backend(32)
        seg.add(_codes(g, n), np.arange(start, start + n))
        ref.add(seg.get_codes(seg.ids), seg.ids)
        segments.append(seg)
        start += n
    dead = g.choice(start, 400, replace=False)
    index = SegmentedIndex(segments, np.concatenate([dead, [10**9]]))  # an unknown id is ignored
    ref.remove(dead)
    added = index.add(_codes(g, 40))
    ref.add(index.get_codes(added), added)
    gone = np.concatenate([added[:5], np.setdiff1d(np.arange(3000, 3250), dead)[:20], [3], [10**9]])
    assert index.remove(gone) == ref.remove(gone)
    assert len(index) == len(ref) and sorted(index.ids.tolist()) == sorted(ref.ids.tolist())
    Q = _codes(g, 25)
    for k in (1, 10, 600, len(ref) + 7):
        got, want = index.search(Q, k), ref.search(Q, k)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.distances, want.distances)
    for radius in (0, 4, 9):
        got, want = index.range_search(Q, radius), ref.range_search(Q, radius)
        for a, b in zip((got.lims, got.distances, got.ids), (want.lims, want.distances, want.ids)):
            np.testing.assert_array_equal(a, b)
    live = ref.ids
    np.testing.assert_array_equal(index.get_codes(live[::7]).data, ref.get_codes(live[::7]).data)
    with pytest.raises(KeyError):
        index.get_codes(dead[:1])
    assert index.contains(np.array([dead[0], live[0]])).tolist() == [False, True]
    with pytest.raises(ValueError, match="not reused"):
        index.add(_codes(g, 1), dead[:1])
    # Compaction: one index of the live entries, the same answers.
    merged = index.merged()
    assert type(merged) is backend and len(merged) == len(ref)
    index.seal()
    index.compact(1)
    assert len(index.segments) == 2 and len(index) == len(ref)
    np.testing.assert_array_equal(index.search(Q, 50).ids, ref.search(Q, 50).ids)
    np.testing.assert_array_equal(merged.search(Q, 50).ids, ref.search(Q, 50).ids)
    assert index.add(_codes(g, 1))[0] == max(start, int(added.max()) + 1)  # ids are never reused


def test_one_segment_without_tombstones_is_the_back_end_itself():
    g = np.random.default_rng(1)
    flat = FlatIndex(32)
    flat.add(_codes(g, 500))
    index = SegmentedIndex([flat])
    Q = _codes(g, 5)
    got, want = index.search(Q, 10), flat.search(Q, 10)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.distances, want.distances)
    assert index.name == "flat" and index.exact
