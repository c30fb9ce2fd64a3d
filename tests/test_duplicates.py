"""hashsearch.duplicates: radius pairs by multi-index hashing, groups, keep rules, and the planted groups of real photos."""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.codes import hamming_distances, pack_bits
from hashsearch.data.sources import open_source
from hashsearch.duplicates import (
    Member,
    choose_keep,
    cosine_of_pairs,
    default_radius,
    duplicate_groups,
    find_duplicates,
    group_labels,
    near_pairs,
    pair_dots,
    whiten_collection,
)
from hashsearch.hashing import create_hasher
from hashsearch.pipeline import build_collection

_spec = importlib.util.spec_from_file_location("planted_duplicates", Path(__file__).parent / "planted_duplicates.py")
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


def build(folder: Path, cache: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            open_source(str(folder), "none"),
            create_backbone("efficientnet-lite0", input_size=128),
            create_hasher("itq", n_bits=64, seed=0),
            index="mih",
            keep_duplicates=True,
            progress=False,
            cache_dir=cache,
            **kw,
        )
    return coll


@pytest.fixture(scope="module")
def planted_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    groups = planted.make_planted(root / "photos")
    return root / "photos", groups, build(root / "photos", root / "cache")


def test_near_pairs_are_every_pair_within_the_radius_as_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, (300, 64))
    flips = rng.random((300, 64)) < 0.05
    bits = np.concatenate([base, base ^ flips])  # 300 pairs about 3 bits apart, the rest ~32
    codes = pack_bits(bits)
    full = hamming_distances(codes, codes)
    for search in ("auto", "mih", "flat"):
        for radius in (0, 3, 6, 20):
            i, j, d = near_pairs(codes, radius, search=search)
            want_i, want_j = np.nonzero(np.triu(full <= radius, k=1))
            assert (i.tolist(), j.tolist()) == (want_i.tolist(), want_j.tolist())
            assert d.tolist() == full[want_i, want_j].tolist()
            assert (i < j).all()
    with pytest.raises(ValueError, match="search must be one of"):
        near_pairs(codes, 3, search="brute")


def test_auto_search_times_both_and_gives_the_same_pairs_on_more_codes_than_its_threshold(monkeypatch):
    import hashsearch.duplicates as dup

    monkeypatch.setattr(dup, "_AUTO_MIN", 100)  # so that 600 codes are timed (the real threshold: 8192)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, (300, 64))
    codes = pack_bits(np.concatenate([base, base ^ (rng.random((300, 64)) < 0.05)]))
    stats: dict = {}
    auto = [np.concatenate(p) for p in zip(*dup._near_pair_chunks(codes, 20, None, "auto", stats))]
    assert stats["search method"] in ("mih", "flat")
    for search in ("mih", "flat"):
        assert [a.tolist() for a in near_pairs(codes, 20, search=search)] == [a.tolist() for a in auto]


def test_pair_dots_are_numpys_dot_products_on_any_number_of_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((700, 37)).astype(np.float32)
    i, j = rng.integers(0, 700, 70_000), rng.integers(0, 700, 70_000)  # enough pairs for 2 threads
    want = np.einsum("nd,nd->n", x[i].astype(np.float64), x[j].astype(np.float64))
    for n_threads in (1, 2):
        got = pair_dots(x, i, j, n_threads)
        assert got.dtype == np.float32 and got.shape == (70_000,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert pair_dots(x, i[:0], j[:0]).shape == (0,)
    x[3] = 0.0  # a zero row has cosine 0 with everything, itself included
    cos = cosine_of_pairs(x, np.array([3, 3, 5]), np.array([3, 4, 5]))
    assert cos[0] == 0 and cos[1] == 0 and cos[2] == pytest.approx(1.0, abs=1e-6)


def test_group_labels_joins_chains_and_leaves_singles_alone():
    labels = group_labels(7, np.array([0, 1, 5]), np.array([1, 3, 6]))
    assert labels.tolist() == [0, 0, 1, 0, 2, 3, 3]


def test_groups_are_complete_linkage_most_alike_pair_first():
    # Codes 2, 2, 1 bits apart along a line (0-1, 1-2, 2-3); 0-2 is 4 bits and 0-3 5 bits apart.
    bits = np.zeros((4, 16), np.uint8)
    bits[1, :2] = bits[2, :4] = bits[3, :5] = 1
    codes = pack_bits(bits)
    assert group_labels(4, *near_pairs(codes, 3)[:2]).tolist() == [0, 0, 0, 0]  # one chain
    # 2-3 (1 bit) join first, then 0-1; 1-2 would put 0 with 2 (4 bits): refused.
    assert [g.tolist() for g in duplicate_groups(codes, 3)] == [[0, 1], [2, 3]]
    assert [g.tolist() for g in duplicate_groups(codes, 5)] == [[0, 1, 2, 3]]  # every pair within 5
    # The same bytes pass whatever the codes, and join first: 0 and 3, then 1 (within 3 bits of
    # both); 2 is 4 bits from 0, so it is left out.
    assert [g.tolist() for g in duplicate_groups(codes, 3, digests=["a", "", "", "a"])] == [[0, 1, 3]]


def test_same_digest_joins_rows_whatever_their_codes():
    codes = pack_bits(np.array([[0] * 16, [1] * 16, [0, 1] * 8]))
    assert duplicate_groups(codes, 0) == []
    groups = duplicate_groups(codes, 0, digests=["a", "b", "a"])
    assert [g.tolist() for g in groups] == [[0, 2]]
    with pytest.raises(ValueError, match="min_similarity needs features"):
        duplicate_groups(codes, 2, min_similarity=0.5)
    with pytest.raises(ValueError, match="radius must be"):
        duplicate_groups(codes, 17)


def test_default_radius_is_a_quarter_of_the_bits():
    assert (default_radius(64), default_radius(128), default_radius(8)) == (16, 32, 2)


def test_finds_the_planted_groups_of_real_photos_exactly(planted_set):
    folder, groups, coll = planted_set
    report = find_duplicates(coll)
    found = [{os.path.relpath(m.path, folder) for m in g.members} for g in report.groups]
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups))
    assert report.n_duplicates == sum(len(g) - 1 for g in groups)
    for g in report.groups:
        assert g.members[0].keep and not any(m.keep for m in g.others)
        assert g.members[0].distance == 0 and g.members[0].similarity == pytest.approx(1.0, abs=1e-3)
        assert all(m.width and m.height and m.bytes for m in g.members)
    # Every stage is timed, and the pairs checked are those of the radius search.
    assert set(report.timings) == {"read", "whiten", "search", "confirm", "group", "files"}
    ids = np.sort(coll.index.ids)
    within = len(near_pairs(coll.index.get_codes(ids), report.radius)[0])
    assert report.pairs == {"pairs within radius": within, "pairs kept": report.pairs["pairs kept"]}
    assert report.n_duplicates <= report.pairs["pairs kept"] < within


def test_the_default_threshold_rises_in_small_collections_only():
    from hashsearch.duplicates import MIN_SIMILARITY, SMALL_COLLECTION, default_min_similarity

    # From SMALL_COLLECTION images on: 0.4 exactly, what every collection got before (the
    # 10,000- and 100,000-image results stand as they are).
    for n in (SMALL_COLLECTION, SMALL_COLLECTION + 1, 10_000, 100_000, 10**9):
        assert default_min_similarity(n) == MIN_SIMILARITY == 0.4
    values = [default_min_similarity(n) for n in range(0, SMALL_COLLECTION + 1, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never lower for fewer images
    assert default_min_similarity(0) == default_min_similarity(44) == default_min_similarity(1000) == 0.5
    assert 0.4 < default_min_similarity(2000) < 0.5
    with pytest.raises(ValueError, match="n_images"):
        default_min_similarity(-1)


def test_find_duplicates_takes_the_default_of_the_collections_size(planted_set, monkeypatch):
    import hashsearch.duplicates as dup

    _, groups, coll = planted_set
    n = len(coll.index.ids)
    assert find_duplicates(coll).min_similarity == dup.default_min_similarity(n) == 0.5
    # A collection of SMALL_COLLECTION images or more: 0.4, and the groups 0.4 gives.
    monkeypatch.setattr(dup, "SMALL_COLLECTION", n)
    large = find_duplicates(coll)
    assert large.min_similarity == 0.4 and _groups_of(large) == _groups_of(find_duplicates(coll, min_similarity=0.4))


def test_narrow_groups_are_those_with_a_member_close_to_the_threshold(planted_set):
    _, _, coll = planted_set
    # At 0.5 (the default here; at 0.6 none is narrow since 'largest' keeps the originals, to which
    # their copies are more alike than to the copy it kept before).
    report = find_duplicates(coll, min_similarity=0.5)
    weakest = [min(m.similarity for m in g.others) for g in report.groups]
    assert report.narrow_groups(0.1) == [k for k, w in enumerate(weakest) if w < 0.6]
    assert report.narrow_groups(0.1) and report.narrow_groups(0.0) == []
    assert find_duplicates(coll, min_similarity=None).narrow_groups() == []  # no feature check: nothing to say


def test_codes_alone_find_more_pairs_than_codes_and_features(planted_set):
    _, groups, coll = planted_set
    with_features = find_duplicates(coll, radius=20)
    codes_only = find_duplicates(coll, radius=20, min_similarity=None)
    assert codes_only.n_duplicates > with_features.n_duplicates  # at 20 bits, look-alikes join: the check matters


def test_exact_copies_are_marked_exact(planted_set):
    folder, _, coll = planted_set
    report = find_duplicates(coll, keep="shortest-path")
    group = next(g for g in report.groups if any(m.key == "backup/same-bytes.jpg" for m in g.members))
    assert group.keep.path == min((m.path for m in group.members), key=lambda p: (len(p), p))
    exact = {m.key for m in group.members if m.exact}
    pair = {"backup/same-bytes.jpg", "originals/bluebell-0.jpg"}
    # Exact: the same bytes as the kept image, never the kept image itself (a fresh user's --json had
    # exact: true on every kept image, so a script counting exact copies overcounted).
    assert not group.keep.exact
    if group.keep.key in pair:
        assert exact == pair - {group.keep.key}
    else:  # the kept copy is not a byte copy of anything
        assert exact == set()
    same = [m for m in group.members if m.key in ("backup/same-bytes.jpg", "originals/bluebell-0.jpg")]
    assert same[0].distance == same[1].distance and same[0].digest == same[1].digest


def test_keep_rules(planted_set):
    folder, groups, coll = planted_set
    largest = find_duplicates(coll, keep="largest")
    white = whiten_collection(coll)
    row = {int(i): k for k, i in enumerate(white.ids)}
    for g in largest.groups:
        # Most pixels; among those the most alike to the rest of the group (mean whitened similarity);
        # then the oldest file; then bytes.
        x = white.features[[row[m.id] for m in g.members]]
        central = [round(float((x[k] @ x.T).sum() - x[k] @ x[k]) / (len(x) - 1), 4) for k in range(len(x))]
        rank = [(m.width * m.height, central[k], -m.mtime, m.bytes) for k, m in enumerate(g.members)]
        assert rank[0] == max(rank), rank
    # The planted copies drawn on or recoloured were saved at JPEG quality 92, so they have more bytes
    # than their originals: by pixels then bytes, 'largest' kept one of them in every planted group
    # (0 of 8 originals). The original is the member its copies are most alike to.
    first = ("originals/", "backup/")  # an original, or its byte copy
    kept = [g.keep.key for g in largest.groups]
    assert sum(k.startswith(first) for k in kept) >= 7 and len(kept) == len(groups), kept
    # No similarities and no times (pixels, then bytes): as before f8649ba.
    by_bytes = [choose_keep([replace(m, mtime=None) for m in g.members], "largest").key for g in largest.groups]
    assert not any(k.startswith(first) for k in by_bytes), by_bytes
    group = largest.groups[0]
    paths = [m.path for m in group.members]
    for age, p in enumerate(paths):  # the last listed the oldest
        os.utime(p, (1_600_000_000 - 1000 * age, 1_600_000_000 - 1000 * age))
    try:
        newest = find_duplicates(coll, keep="newest").groups
        oldest = find_duplicates(coll, keep="oldest").groups
        assert next(g for g in newest if g.keep.path in paths).keep.path == paths[0]
        assert next(g for g in oldest if g.keep.path in paths).keep.path == paths[-1]
    finally:
        for p in paths:
            os.utime(p)
    with pytest.raises(ValueError, match="keep must be one of"):
        find_duplicates(coll, keep="biggest")


def _member(id_: int, bytes_: int, size: int = 224) -> Member:
    return Member(id_, f"{id_}.jpg", None, f"/p/{id_}.jpg", str(id_), bytes=bytes_, width=size, height=size)


def test_largest_ranks_equally_large_members_by_how_alike_they_are_to_the_rest_then_by_bytes():
    """A fresh user's --keep largest kept a flipped copy re-encoded at JPEG quality 90 (more bytes)
    over its original and moved the original away. Each copy departs from the original in its own
    way, so the original is the member most alike to the others; bytes only break what is left."""
    original, q30, flipped, half = _member(0, 11_622), _member(1, 6_285), _member(2, 17_064), _member(3, 6_479, 112)
    members = [original, q30, flipped, half]
    # Similarities as find_duplicates measures them (the user's group: the original's row is highest).
    alike = np.array(
        [[1.0, 0.83, 0.75, 0.71], [0.83, 1.0, 0.62, 0.60], [0.75, 0.62, 1.0, 0.55], [0.71, 0.60, 0.55, 1.0]]
    )
    assert choose_keep(members, "largest", alike) is original
    assert choose_keep(members, "largest") is flipped  # without the similarities: by bytes, as before
    # A larger copy still comes first (most pixels), and in a group of two the mean is the same for
    # both: bytes decide, and a higher-quality re-encode outweighs its original (docs/duplicates.md).
    bigger = _member(4, 30_000, 448)
    assert choose_keep([*members, bigger], "largest", np.pad(alike, (0, 1), constant_values=0.5)) is bigger
    assert choose_keep([original, flipped], "largest", alike[np.ix_([0, 2], [0, 2])]) is flipped
    # Codes only: minus the Hamming distances rank them the same way.
    assert (
        choose_keep(members, "largest", -np.array([[0, 1, 3, 5], [1, 0, 4, 6], [3, 4, 0, 8], [5, 6, 8, 0]])) is original
    )


def test_a_collection_without_features_uses_codes_only(tmp_path, planted_set):
    folder, _, _ = planted_set
    coll = build(folder, tmp_path / "cache", store_features=False)
    report = find_duplicates(coll)
    assert report.groups and all(m.similarity is None for g in report.groups for m in g.members)
    with pytest.raises(ValueError, match="min_similarity needs stored features"):
        find_duplicates(coll, min_similarity=0.5)
    with pytest.raises(ValueError, match="radius must be"):
        find_duplicates(coll, radius=65)


def _groups_of(report):
    return [[(m.id, m.keep, m.distance, m.similarity, m.exact) for m in g.members] for g in report.groups]


def test_whitened_features_given_again_give_the_same_groups_without_whitening_again(planted_set, monkeypatch):
    import hashsearch.duplicates as dup

    _, _, coll = planted_set
    fresh = [find_duplicates(coll), find_duplicates(coll, radius=20, min_similarity=0.3)]
    calls = []
    real = dup.whiten
    monkeypatch.setattr(dup, "whiten", lambda *a, **k: calls.append(1) or real(*a, **k))  # counts, then whitens
    whitened = whiten_collection(coll)
    assert len(calls) == 1 and whitened.ids.tolist() == sorted(coll.index.ids.tolist())
    again = [
        find_duplicates(coll, whitened=whitened),
        find_duplicates(coll, radius=20, min_similarity=0.3, whitened=whitened),
    ]
    assert len(calls) == 1  # reused, not computed again
    assert [_groups_of(r) for r in again] == [_groups_of(r) for r in fresh] and fresh[0].groups
    # Whitened features of other ids (the collection changed since) are not used: computed again.
    stale = dup.Whitened(whitened.ids[:-1], whitened.features[:-1])
    assert _groups_of(find_duplicates(coll, whitened=stale)) == _groups_of(fresh[0]) and len(calls) == 2


def test_a_chain_of_passing_pairs_is_not_one_group_when_its_ends_fail(planted_set, tmp_path):
    """Finding 7: A~B and B~C with A and C far apart. Connected components put all three in one
    group; complete linkage does not, and every pair of every group reported passes the test."""
    import shutil

    from PIL import Image

    folder, _, _ = planted_set
    chain_set = tmp_path / "photos"
    shutil.copytree(folder, chain_set)
    a = Image.open(chain_set / "singles" / "daisy-0.jpg").convert("RGB")
    b = Image.open(chain_set / "singles" / "iris-0.jpg").convert("RGB").resize(a.size)
    (chain_set / "chain").mkdir()
    for k in (1, 2):  # a quarter and a half of the way from a daisy to an iris
        Image.blend(a, b, k / 4).save(chain_set / "chain" / f"blend-{k}.jpg", quality=92)
    coll = build(chain_set, folder.parent / "cache")  # the planted set's features come from its cache
    ids = np.sort(coll.index.ids)
    keys = [e["key"] for e in coll.entries(ids.tolist())]
    rows = [keys.index(k) for k in ("singles/daisy-0.jpg", "chain/blend-1.jpg", "chain/blend-2.jpg")]
    white = whiten_collection(coll).features
    codes = coll.index.get_codes(ids)
    sim = white[rows] @ white[rows].T
    dist = hamming_distances(codes[rows], codes[rows])
    radius = int(max(dist[0, 1], dist[1, 2]))
    threshold = round(float(min(sim[0, 1], sim[1, 2])) - 0.01, 3)
    # The chain as built: both links pass, its ends fail on the features and on the codes.
    assert sim[0, 2] < threshold - 0.1 and dist[0, 2] > radius, (sim, dist)
    for min_similarity in (threshold, None):
        # The rule before: the pairs that pass, joined as connected components, hold the chain's ends together.
        i, j, _ = near_pairs(codes, radius)
        if min_similarity is not None:
            ok = np.einsum("nd,nd->n", white[i], white[j]) >= min_similarity
            i, j = i[ok], j[ok]
        labels = group_labels(len(ids), i, j)
        assert labels[rows[0]] == labels[rows[2]]
        report = find_duplicates(coll, radius, min_similarity=min_similarity)
        together = [g for g in report.groups if {keys[rows[0]], keys[rows[2]]} <= {m.key for m in g.members}]
        assert not together
        for g in report.groups:
            r = np.array([keys.index(m.key) for m in g.members])
            passes = hamming_distances(codes[r], codes[r]) <= radius
            if min_similarity is not None:
                passes &= white[r] @ white[r].T >= min_similarity - 1e-6
            exact = np.array([[x.digest == y.digest for y in g.members] for x in g.members])
            assert (passes | exact).all(), [m.key for m in g.members]
            assert all(m.distance <= radius for m in g.members)
            if min_similarity is not None:
                assert all(m.similarity >= min_similarity - 1e-3 for m in g.members)


def test_largest_breaks_a_tie_of_pixels_and_likeness_by_the_older_file_then_bytes():
    """In a group of two images with as many pixels, both are as alike to the other: the older file
    is kept (copies are made after their originals), then the one with more bytes."""
    alike = np.array([[1.0, 0.9], [0.9, 1.0]])
    original = Member(1, "a.jpg", None, "/p/a.jpg", "d1", bytes=14_164, width=224, height=224, mtime=1000.0)
    mirror = Member(2, "m.jpg", None, "/p/m.jpg", "d2", bytes=21_501, width=224, height=224, mtime=1000.0 + 30 * 86400)
    assert choose_keep([original, mirror], "largest", alike) is original
    assert choose_keep([mirror, original], "largest", alike) is original
    # As old: bytes decide, as before; unknown times come after known ones.
    same = Member(3, "s.jpg", None, "/p/s.jpg", "d3", bytes=21_501, width=224, height=224, mtime=1000.0)
    assert choose_keep([original, same], "largest", alike) is same
    unknown = Member(4, "u.jpg", None, "/p/u.jpg", "d4", bytes=99_999, width=224, height=224, mtime=None)
    assert choose_keep([unknown, original], "largest", alike) is original
    # More pixels still come first, and a member more alike to the rest before an older one.
    big = Member(5, "b.jpg", None, "/p/b.jpg", "d5", bytes=1, width=448, height=448, mtime=5e9)
    assert choose_keep([original, big], "largest", alike) is big
