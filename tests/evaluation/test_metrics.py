"""Metrics on hand-computed cases, against brute force over tie orders, and as properties."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashsearch.codes import hamming_distances, pack_bits
from hashsearch.evaluation import metrics as M
from hashsearch.evaluation.metrics import (
    evaluate,
    evaluate_distances,
    mean_average_precision,
    pr_curve,
    precision_at_k,
    radius_precision_recall,
    recall_at_k,
    relevance,
    tie_aware_map,
)


def ap_of_order(rel_in_order) -> float:
    """Reference AP@all of one ranked relevance list, written out plainly."""
    hits, total = 0, 0.0
    for i, r in enumerate(rel_in_order, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else float("nan")


def aps_over_tie_orders(dist, rel) -> list[float]:
    """AP of every distinct arrangement of relevance labels within each tie group.

    Every distinct arrangement of a group's labels comes from the same number of item
    permutations, so the plain mean of this list is the expectation under random tie order.
    """
    dist, rel = np.asarray(dist), np.asarray(rel, bool)
    groups = [rel[dist == v].tolist() for v in np.unique(dist)]
    choices = [sorted(set(itertools.permutations(g))) for g in groups]
    return [ap_of_order([x for part in combo for x in part]) for combo in itertools.product(*choices)]


# ---------------------------------------------------------------------------- relevance


def test_relevance_single_label():
    assert relevance([0, 1], [1, 0, 0]).tolist() == [[False, True, True], [True, False, False]]


def test_relevance_multi_label_needs_one_shared_label():
    q = [[1, 0, 1], [0, 0, 0]]
    db = [[0, 0, 1], [0, 1, 0], [1, 1, 1]]
    # query 0 shares class 2 with db 0, nothing with db 1, classes 0 and 2 with db 2;
    # query 1 has no label, so nothing is relevant to it.
    assert relevance(q, db).tolist() == [[True, False, True], [False, False, False]]


def test_relevance_errors_name_the_problem():
    with pytest.raises(ValueError, match="query_labels are single-label"):
        relevance([0, 1], [[0, 1]])
    with pytest.raises(ValueError, match="3 classes but db_labels have 2"):
        relevance([[0, 1, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="multi-hot 0/1"):
        relevance([[0, 2]], [[0, 1]])
    with pytest.raises(TypeError, match="integer class ids"):
        relevance([0.0, 1.0], [1, 0])


# ---------------------------------------------------------------------------- mAP

# distances [0, 1, 1, 2], relevance [1, 0, 1, 1]; id-order ranking: 0(rel) 1(non) 2(rel) 3(rel)
# precision at the relevant ranks 1, 3, 4: 1/1, 2/3, 3/4  ->  AP = (1 + 2/3 + 3/4) / 3 = 29/36
HAND_D = [[0, 1, 1, 2]]
HAND_R = [[1, 0, 1, 1]]
AP_ID_ORDER = (1 + 2 / 3 + 3 / 4) / 3
# the tie at distance 1 reversed (relevant item has the lower id): 0(rel) 1(rel) 2(non) 3(rel)
# -> AP = (1/1 + 2/2 + 3/4) / 3 = 11/12
AP_REVERSED = (1 + 2 / 2 + 3 / 4) / 3


def test_map_hand_case_id_order_ties():
    res = mean_average_precision(HAND_D, HAND_R)
    assert res.value == pytest.approx(AP_ID_ORDER)
    assert res.per_query.tolist() == pytest.approx([AP_ID_ORDER])
    assert res.n_excluded == 0


def test_map_hand_case_ties_reversed():
    assert mean_average_precision(HAND_D, [[1, 1, 0, 1]]).value == pytest.approx(AP_REVERSED)


def test_map_ties_follow_database_index_not_input_position():
    # same items, database stored in another order: the id-order value changes, the tie-aware one does not
    d2, r2 = [[0, 1, 1, 2]], [[1, 1, 0, 1]]
    assert mean_average_precision(d2, r2).value != pytest.approx(AP_ID_ORDER)
    assert tie_aware_map(d2, r2).value == pytest.approx(tie_aware_map(HAND_D, HAND_R).value)


def test_map_at_k_truncation():
    # k=2: top 2 = rel, non -> R_2 = 1, AP@2 = (1/1) / 1 = 1
    assert mean_average_precision(HAND_D, HAND_R, k=2).value == pytest.approx(1.0)
    # k=3: top 3 = rel, non, rel -> AP@3 = (1/1 + 2/3) / 2 = 5/6
    assert mean_average_precision(HAND_D, HAND_R, k=3).value == pytest.approx(5 / 6)
    # k beyond the database is clipped: same as @all
    assert mean_average_precision(HAND_D, HAND_R, k=100).value == pytest.approx(AP_ID_ORDER)


def test_map_relevant_items_outside_top_k_score_zero():
    # query 0: relevant item at rank 3 only; with k=2 it retrieved nothing right -> 0
    # query 1: relevant at rank 1 -> 1; mean = 0.5
    res = mean_average_precision([[0, 1, 2], [0, 1, 2]], [[0, 0, 1], [1, 0, 0]], k=2)
    assert res.per_query.tolist() == [0.0, 1.0]
    assert res.value == 0.5 and res.n_excluded == 0


def test_query_without_relevant_items_is_excluded_and_counted():
    d = [[0, 1, 1, 2], [0, 1, 2, 3]]
    r = [[1, 0, 1, 1], [0, 0, 0, 0]]  # query 1 has nothing relevant in the database
    for fn in (mean_average_precision, tie_aware_map):
        res = fn(d, r)
        assert res.n_excluded == 1
        assert math.isnan(res.per_query[1])
        assert res.value == pytest.approx(fn(d[:1], r[:1]).value)  # not averaged in as 0
    for fn in (precision_at_k, recall_at_k):
        res = fn(d, r, k=2)
        assert res.n_excluded == 1 and math.isnan(res.per_query[1])


def test_all_queries_excluded_gives_nan_not_zero():
    res = mean_average_precision([[0, 1]], [[0, 0]])
    assert math.isnan(res.value) and res.n_excluded == 1


def test_map_multi_label():
    q = [[1, 0, 0], [0, 1, 1]]
    db = [[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    rel = relevance(q, db)  # q0: db 0, 2 ; q1: db 0, 1, 3
    d = [[0, 1, 2, 3], [3, 2, 1, 0]]
    # q0 ranking 0(rel) 1 2(rel) 3 -> (1 + 2/3) / 2 = 5/6
    # q1 ranking 3(rel) 2 1(rel) 0(rel) -> (1 + 2/3 + 3/4) / 3 = 29/36
    res = mean_average_precision(d, rel)
    assert res.per_query.tolist() == pytest.approx([5 / 6, 29 / 36])


def test_float_distances_rank_the_same_way():
    d = np.array([[0.5, 0.1, 0.9, 0.3]])
    r = [[0, 1, 1, 0]]  # ranking: 1(rel) 3 0 2(rel) -> (1 + 2/4) / 2 = 0.75
    assert mean_average_precision(d, r).value == pytest.approx(0.75)


def test_input_errors():
    with pytest.raises(ValueError, match="relevant has shape"):
        mean_average_precision([[0, 1]], [[1, 0, 1]])
    with pytest.raises(ValueError, match="k must be a positive integer or None"):
        mean_average_precision([[0, 1]], [[1, 0]], k=0)
    with pytest.raises(TypeError, match="bool or 0/1"):
        mean_average_precision([[0, 1]], [[2, 0]])
    with pytest.raises(TypeError, match="integer \\(Hamming\\) distances"):
        tie_aware_map([[0.0, 1.0]], [[1, 0]])
    with pytest.raises(ValueError, match="non-negative"):
        tie_aware_map([[-1, 1]], [[1, 0]])
    with pytest.raises(ValueError, match="radius must be a non-negative integer"):
        radius_precision_recall([[0, 1]], [[1, 0]], radius=-1)


# ---------------------------------------------------------------------------- tie-aware mAP


def test_tie_aware_hand_case():
    # the tie at distance 1 holds one relevant and one non-relevant item: the two orders are
    # equally likely, so the expectation is the mean of 29/36 and 11/12 = 31/36
    assert tie_aware_map(HAND_D, HAND_R).value == pytest.approx((AP_ID_ORDER + AP_REVERSED) / 2)


def test_tie_aware_equals_mean_over_all_permutations():
    # Enumerate every item permutation within each tie group (3! * 2! * 3! = 72 orders).
    d = np.array([0, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    r = np.array([1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)
    groups = [np.flatnonzero(d == v) for v in np.unique(d)]
    aps = [
        ap_of_order(r[np.concatenate(perm)]) for perm in itertools.product(*(itertools.permutations(g) for g in groups))
    ]
    assert len(aps) == 1 * 6 * 2 * 6 * 1
    assert tie_aware_map(d[None], r[None]).value == pytest.approx(np.mean(aps), rel=1e-12)


def test_tie_aware_matches_monte_carlo():
    g = np.random.default_rng(1)
    nq, nd, trials = 4, 300, 400
    d = g.integers(0, 9, (nq, nd))
    r = g.random((nq, nd)) < 0.2
    exact = tie_aware_map(d, r).per_query
    samples = np.empty((trials, nq))
    for t in range(trials):
        # a random key within each distance: sorting by (distance, key) is a uniform tie order
        order = np.lexsort((g.random((nq, nd)), d), axis=1)
        rs = np.take_along_axis(r, order, axis=1)
        samples[t] = [ap_of_order(row) for row in rs]
    se = samples.std(axis=0) / math.sqrt(trials)
    assert np.all(np.abs(samples.mean(axis=0) - exact) < 4 * se + 1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=8))
def test_tie_aware_lies_within_tie_order_extremes_and_equals_their_mean(items):
    d = np.array([x for x, _ in items])
    r = np.array([y for _, y in items])
    aps = aps_over_tie_orders(d, r)
    res = tie_aware_map(d[None], r[None])
    if not r.any():
        assert res.n_excluded == 1
        return
    assert min(aps) - 1e-12 <= res.value <= max(aps) + 1e-12
    assert res.value == pytest.approx(np.mean(aps), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(8)), st.lists(st.booleans(), min_size=8, max_size=8).filter(any))
def test_tie_aware_equals_map_without_ties(perm, rel):
    d = np.array(perm)[None]
    r = np.array(rel)[None]
    assert tie_aware_map(d, r).value == pytest.approx(mean_average_precision(d, r).value, rel=1e-12)


def test_blocked_computation_matches_single_block(monkeypatch):
    g = np.random.default_rng(2)
    d = g.integers(0, 17, (50, 40))
    r = g.random((50, 40)) < 0.3
    whole = [
        mean_average_precision(d, r).per_query,
        tie_aware_map(d, r).per_query,
        pr_curve(d, r).precision,
        evaluate_distances(d, r, ks=(5,)),
    ]
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 7 * 40)  # 7 queries per block, last block partial
    blocked = [
        mean_average_precision(d, r).per_query,
        tie_aware_map(d, r).per_query,
        pr_curve(d, r).precision,
        evaluate_distances(d, r, ks=(5,)),
    ]
    for a, b in zip(whole[:3], blocked[:3]):
        np.testing.assert_allclose(a, b)
    assert whole[3] == blocked[3]


# ---------------------------------------------------------------------------- P@k, R@k


def test_precision_and_recall_at_k_hand_case():
    # ranking 0(rel) 1(non) 2(rel) 3(rel); 3 relevant in all
    # k=1: P 1/1, R 1/3 ; k=2: P 1/2, R 1/3 ; k=3: P 2/3, R 2/3 ; k=4: P 3/4, R 1
    for k, p, rec in [(1, 1, 1 / 3), (2, 1 / 2, 1 / 3), (3, 2 / 3, 2 / 3), (4, 3 / 4, 1)]:
        assert precision_at_k(HAND_D, HAND_R, k).value == pytest.approx(p)
        assert recall_at_k(HAND_D, HAND_R, k).value == pytest.approx(rec)
    # k beyond the database is clipped to it
    assert precision_at_k(HAND_D, HAND_R, 10).value == pytest.approx(3 / 4)


def test_precision_at_k_uses_id_order_ties():
    # all at distance 0: top 2 by id are items 0 and 1
    assert precision_at_k([[0, 0, 0, 0]], [[0, 0, 1, 1]], 2).value == 0.0
    assert precision_at_k([[0, 0, 0, 0]], [[1, 1, 0, 0]], 2).value == 1.0


# ---------------------------------------------------------------------------- radius


def test_radius_precision_recall_with_empty_ball():
    d = [[0, 1, 1, 2, 3], [3, 3, 4, 4, 5], [0, 0, 0, 0, 0]]
    r = [[1, 0, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # q0: ball {0,1,2,3}, 3 relevant in it -> P 3/4, R 3/3
    # q1: empty ball -> P 0 (failed lookup), R 0
    # q2: no relevant item in the database -> excluded from all three numbers
    p, rec, empty = radius_precision_recall(d, r, radius=2)
    assert p.per_query[:2].tolist() == [0.75, 0.0] and math.isnan(p.per_query[2])
    assert p.value == pytest.approx(3 / 8)
    assert rec.value == pytest.approx(1 / 2)
    assert empty == pytest.approx(1 / 2)
    assert p.n_excluded == rec.n_excluded == 1


def test_radius_is_inclusive():
    p, rec, empty = radius_precision_recall([[2, 3]], [[1, 0]], radius=2)
    assert (p.value, rec.value, empty) == (1.0, 1.0, 0.0)


# ---------------------------------------------------------------------------- PR curve


def test_pr_curve_hand_case_and_endpoints():
    d = [[0, 1, 1, 2, 3], [3, 3, 4, 4, 5]]
    r = [[1, 0, 1, 1, 0], [1, 0, 0, 0, 0]]
    c = pr_curve(d, r)
    assert c.radii.tolist() == [0, 1, 2, 3, 4, 5]
    # q0 per radius: retrieved 1,3,4,5,5,5 relevant 1,2,3,3,3,3 (of 3)
    # q1 per radius: retrieved 0,0,0,2,4,5 relevant 0,0,0,1,1,1 (of 1); empty ball -> P 0
    p0 = [1, 2 / 3, 3 / 4, 3 / 5, 3 / 5, 3 / 5]
    p1 = [0, 0, 0, 1 / 2, 1 / 4, 1 / 5]
    r0 = [1 / 3, 2 / 3, 1, 1, 1, 1]
    r1 = [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(c.precision, (np.array(p0) + p1) / 2)
    np.testing.assert_allclose(c.recall, (np.array(r0) + r1) / 2)
    np.testing.assert_allclose(c.frac_empty, [0.5, 0.5, 0.5, 0, 0, 0])
    assert c.recall[-1] == 1.0  # at the largest distance everything is retrieved
    # at max radius precision is the fraction of the database that is relevant
    assert c.precision[-1] == pytest.approx(np.mean(np.mean(r, axis=1)))
    # one convention: the curve at radius 2 is radius_precision_recall(radius=2)
    p, rec, _ = radius_precision_recall(d, r, radius=2)
    assert (c.precision[2], c.recall[2]) == pytest.approx((p.value, rec.value))


def test_pr_curve_max_radius_extends_past_largest_distance():
    c = pr_curve([[0, 1]], [[1, 0]], max_radius=4)
    assert c.radii.tolist() == [0, 1, 2, 3, 4]
    assert c.recall.tolist() == [1.0] * 5
    assert c.precision.tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]


# ---------------------------------------------------------------------------- evaluate


def random_codes(g, n, n_bits, labels, centres, flip=0.25):
    bits = centres[labels] ^ (g.random((n, n_bits)) < flip)
    return pack_bits(bits.astype(np.uint8))


def test_evaluate_matches_metric_functions():
    g = np.random.default_rng(3)
    n_bits, n_classes = 12, 4
    centres = g.integers(0, 2, (n_classes, n_bits))
    yq, yd = g.integers(0, n_classes, 40), g.integers(0, n_classes, 300)
    yq[0] = n_classes  # a class absent from the database: excluded
    centres = np.vstack([centres, g.integers(0, 2, (1, n_bits))])
    qc, dc = random_codes(g, 40, n_bits, yq, centres), random_codes(g, 300, n_bits, yd, centres)
    out = evaluate(qc, dc, yq, yd, k_map=50, ks=(10, 100), radius=2)
    json.dumps(out, allow_nan=False)  # JSON-able as it is

    d, r = hamming_distances(qc, dc), relevance(yq, yd)
    assert out["map"] == pytest.approx(mean_average_precision(d, r, k=50).value)
    assert out["map_at"] == 50
    assert out["map_tie_aware"] == pytest.approx(tie_aware_map(d, r).value)
    for k in (10, 100):
        assert out[f"p@{k}"] == pytest.approx(precision_at_k(d, r, k).value)
        assert out[f"r@{k}"] == pytest.approx(recall_at_k(d, r, k).value)
    p, rec, empty = radius_precision_recall(d, r, 2)
    assert (out["precision_r2"], out["recall_r2"], out["frac_empty_r2"]) == pytest.approx((p.value, rec.value, empty))
    curve = pr_curve(d, r, max_radius=n_bits)
    assert out["pr_curve"]["radii"] == list(range(n_bits + 1))
    np.testing.assert_allclose(out["pr_curve"]["precision"], curve.precision)
    np.testing.assert_allclose(out["pr_curve"]["recall"], curve.recall)
    assert (out["n_queries"], out["n_database"], out["n_excluded"], out["n_bits"]) == (40, 300, 1, n_bits)
    assert out == evaluate_distances(d, r, k_map=50, ks=(10, 100), radius=2, max_radius=n_bits) | {"n_bits": n_bits}


def test_evaluate_multi_label():
    g = np.random.default_rng(4)
    yq = (g.random((10, 5)) < 0.3).astype(np.uint8)
    yd = (g.random((60, 5)) < 0.3).astype(np.uint8)
    qc = pack_bits(g.integers(0, 2, (10, 16)))
    dc = pack_bits(g.integers(0, 2, (60, 16)))
    out = evaluate(qc, dc, yq, yd, ks=(5,))
    r = relevance(yq, yd)
    assert out["map"] == pytest.approx(mean_average_precision(hamming_distances(qc, dc), r).value)
    assert out["n_excluded"] == int((~r.any(axis=1)).sum())


def test_evaluate_distances_float_skips_hamming_only_metrics():
    g = np.random.default_rng(5)
    d = g.random((6, 30))
    r = g.random((6, 30)) < 0.3
    out = evaluate_distances(d, r, ks=(5,))
    assert out["map"] == pytest.approx(mean_average_precision(d, r).value)
    assert out["p@5"] == pytest.approx(precision_at_k(d, r, 5).value)
    assert out["map_tie_aware"] is None and out["pr_curve"] is None and out["precision_r2"] is None
    json.dumps(out, allow_nan=False)


def test_evaluate_errors():
    c8, c16 = pack_bits(np.zeros((2, 8), np.uint8)), pack_bits(np.zeros((3, 16), np.uint8))
    with pytest.raises(ValueError, match="8 bits but db_codes have 16"):
        evaluate(c8, c16, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="db_labels has 2 rows but there are 3 codes"):
        evaluate(c16[:2], c16, [0, 1], [0, 1])
    with pytest.raises(TypeError, match="must be hashsearch.types.Codes"):
        evaluate(np.zeros((2, 1), np.uint8), c8, [0, 1], [0, 1])
    with pytest.raises(ValueError, match="each entry of ks"):
        evaluate(c8, c8, [0, 1], [0, 1], ks=(0,))
