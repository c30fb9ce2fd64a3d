"""Leave-one-out evaluation (`evaluate(..., exclude=)`): every metric equals that of the
database with the query's own item deleted, checked against that deletion done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashsearch.codes import pack_bits
from hashsearch.evaluation.metrics import evaluate

KS = (1, 5, 40, 200)  # 40 is the database less one, 200 past the database's end


def _mean(values) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _by_deletion(bits, labels, n_bits) -> dict:
    """The reference: each query evaluated alone against the set with its own row deleted, then averaged."""
    per = []
    for i in range(len(bits)):
        keep = np.delete(np.arange(len(bits)), i)
        per.append(evaluate(pack_bits(bits[i : i + 1]), pack_bits(bits[keep]), labels[i : i + 1], labels[keep], ks=KS))
    out = {key: _mean([p[key] for p in per]) for key in ["map", "map_tie_aware", "precision_r2", "recall_r2"]}
    out.update({f"p@{k}": _mean([p[f"p@{k}"] for p in per]) for k in KS})
    out.update({f"r@{k}": _mean([p[f"r@{k}"] for p in per]) for k in KS})
    out["frac_empty_r2"] = _mean([p["frac_empty_r2"] for p in per])
    out["n_excluded"] = sum(p["n_excluded"] for p in per)
    # The PR curve's precision at each radius, averaged over the queries that have a relevant item.
    curves = [p["pr_curve"]["precision"] for p in per if p["n_excluded"] == 0]
    out["pr_precision"] = np.mean([c[: n_bits + 1] for c in curves], axis=0)
    return out


@pytest.mark.parametrize("n_bits", [6, 16])
def test_leave_one_out_equals_deleting_the_own_item(n_bits):
    rng = np.random.default_rng(n_bits)
    # 41 items, 3 classes and a class of one (its query has nothing relevant once it is left
    # out, so it must be excluded from the means); 6-bit codes make ties everywhere.
    labels = np.array([0] * 15 + [1] * 15 + [2] * 10 + [3], np.int64)
    centres = rng.integers(0, 2, (4, n_bits))
    flips = rng.random((len(labels), n_bits)) < 0.2
    bits = (centres[labels] ^ flips).astype(np.uint8)
    codes = pack_bits(bits)

    got = evaluate(codes, codes, labels, labels, ks=KS, exclude=np.arange(len(labels)))
    want = _by_deletion(bits, labels, n_bits)
    for key in ["map", "map_tie_aware", "precision_r2", "recall_r2", "frac_empty_r2"]:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    for k in KS:
        assert got[f"p@{k}"] == pytest.approx(want[f"p@{k}"], abs=1e-12), k
        assert got[f"r@{k}"] == pytest.approx(want[f"r@{k}"], abs=1e-12), k
    assert got["n_excluded"] == want["n_excluded"] == 1
    assert got["n_left_out"] == len(labels)
    np.testing.assert_allclose(got["pr_curve"]["precision"], want["pr_precision"], atol=1e-12)

    # Without leaving out, every query finds itself first at distance 0: mAP is higher.
    plain = evaluate(codes, codes, labels, labels, ks=KS)
    assert plain["map"] > got["map"] and plain["n_excluded"] == 0 and "n_left_out" not in plain


def test_hand_case_the_own_item_does_not_count():
    # Query 0 is database item 0; item 1 (same class) is at distance 1, item 2 (other) at 2.
    bits = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]], np.uint8)
    codes, labels = pack_bits(bits), np.array([0, 0, 1])
    plain = evaluate(codes[0:1], codes, labels[:1], labels, ks=(1, 3))
    assert (
        plain["map"] == 1.0 and plain["p@3"] == pytest.approx(2 / 3) and plain["precision_r2"] == pytest.approx(2 / 3)
    )
    loo = evaluate(codes[0:1], codes, labels[:1], labels, ks=(1, 3), exclude=[0])
    assert loo["map"] == 1.0 and loo["p@1"] == 1.0
    assert loo["p@3"] == pytest.approx(1 / 2)  # two items left to retrieve, one relevant
    assert loo["precision_r2"] == pytest.approx(1 / 2) and loo["recall_r2"] == 1.0
    assert loo["pr_curve"]["precision"][0] == 0.0  # the ball of radius 0 held only the query itself


def test_minus_one_leaves_nothing_out():
    rng = np.random.default_rng(0)
    q, d = pack_bits(rng.integers(0, 2, (7, 12))), pack_bits(rng.integers(0, 2, (30, 12)))
    yq, yd = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    plain = evaluate(q, d, yq, yd)
    none = evaluate(q, d, yq, yd, exclude=np.full(7, -1))
    assert {k: v for k, v in none.items()} == plain


@pytest.mark.parametrize(
    ("exclude", "words"),
    [
        (np.arange(6), "shape (5,)"),
        (np.array([0, 1, 2, 3, 30]), "0..29"),
        (np.array([0, 1, -2, 3, 4]), "-1 (none)"),
        (np.array([0.0, 1, 2, 3, 4]), "integer database indices"),
    ],
)
def test_bad_exclude_is_named(exclude, words):
    rng = np.random.default_rng(1)
    q, d = pack_bits(rng.integers(0, 2, (5, 8))), pack_bits(rng.integers(0, 2, (30, 8)))
    with pytest.raises(ValueError, match="exclude") as e:
        evaluate(q, d, np.zeros(5, int), np.zeros(30, int), exclude=exclude)
    assert words in str(e.value)
