"""A saved collection changed by small adds and removes keeps its index, re-rank rows and entries
as segments (a base and deltas): what it answers equals what one never saved answers (one index,
one array of rows, pending records), through reopenings, the merge of deltas past their bound,
and a compaction; an older collection (no deltas) opens as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.collection import MAX_DELTAS, Collection
from hashsearch.hashing import create_hasher
from hashsearch.index.segments import SegmentedIndex

D, N = 32, 2000


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    centres = g.normal(0, 3, (20, D))
    X = (centres[g.integers(0, 20, N + 400)] + g.normal(size=(N + 400, D))).astype(np.float32)
    return X, create_hasher("itq", n_bits=32, seed=0).fit(X[:N])


def observed(coll: Collection, Q: np.ndarray):
    """What a user sees: k-NN (small and large k), radius, coarse-to-fine, records, label counts,
    digests, features of the hits."""
    out = []
    for kw in ({"k": 10}, {"k": 700}, {"k": 50, "radius": 3}, {"k": 10, "rerank": 60}):
        r = coll.search(Q, **kw)
        out.append((r.ids.tolist(), np.round(r.distances, 4).tolist()))
    r = coll.index.range_search(coll.hasher.encode(Q), 4)
    out.append((r.lims.tolist(), r.distances.tolist(), r.ids.tolist()))
    ids = sorted(int(i) for i in coll.index.ids)
    out.append([(e["id"], e["key"], e["label"], e["digest"], e["path"]) for e in coll.entries(ids)])
    info = coll.info()
    out.append((info["count"], info["labels"], info["sources"]))
    out.append(sorted(coll.ids_by_digest([f"d{i}" for i in range(0, N + 400, 7)]).items()))
    hits = np.unique(out[0][0])
    out.append(np.asarray(coll.features_of(np.array(hits[hits >= 0])), np.float32).round(3).tolist())
    return out


def _manifest(path):
    gen = (path / "CURRENT").read_text().strip()
    return json.loads((path / gen / "manifest.json").read_text())


@pytest.mark.parametrize("index, store", [("flat", "full"), ("mih", "pca-8")])
def test_deltas_answer_as_one_segment_then_merge_and_compact(data, tmp_path, index, store):
    X, hasher = data
    Q = X[N - 30 : N + 10]
    g = np.random.default_rng(1)

    def make():
        return Collection.create(create_backbone("efficientnet-lite0"), hasher, index=index, rerank_store=store)

    def add(coll, lo, hi):
        keys = [f"img/{i}.jpg" for i in range(lo, hi)]
        coll.add(X[lo:hi], keys, [f"c{i % 3}" for i in range(lo, hi)], [f"d{i}" for i in range(lo, hi)], root=tmp_path)

    ref, path = make(), tmp_path / "c.hsx"  # ref: never saved, so one index and pending records
    add(ref, 0, N)
    coll = make()
    add(coll, 0, N)
    coll.save(path)
    lo = N
    for step in range(MAX_DELTAS + 2):  # one more than the deltas' bound: they are merged into one
        coll = Collection.open(path)
        add(coll, lo, lo + 25)
        add(ref, lo, lo + 25)
        live = np.array(sorted(ref.index.ids))
        gone = g.choice(live, 15, replace=False)  # from the base and from the deltas
        assert coll.remove(gone) == ref.remove(gone) == 15
        lo += 25
        if step == 2:  # a moved folder: the roots change, not the entries
            for c in (coll, ref):
                c.relocate(tmp_path, tmp_path / "moved")
        coll.save(path)
        deltas = _manifest(path).get("deltas", [])
        assert 1 <= len(deltas) <= MAX_DELTAS
        back = Collection.open(path)
        assert isinstance(back.index, SegmentedIndex) and len(back.index.segments) == len(deltas) + 1
        assert observed(back, Q) == observed(ref, Q), f"step {step}"
    assert len(deltas) < step + 1  # the deltas were merged
    assert _manifest(path)["version"] == 4
    # On demand: one base, no deltas, the removed rows dropped; the format of a collection without segments.
    back.compact()
    back.save(path)
    m = _manifest(path)
    assert "deltas" not in m and m["version"] == (2 if store == "full" else 3)
    again = Collection.open(path)
    assert not isinstance(again.index, SegmentedIndex) and len(again._features) == len(ref)
    assert observed(again, Q) == observed(ref, Q)


def test_a_large_change_compacts_and_a_small_one_is_a_delta(data, tmp_path):
    X, hasher = data
    coll = Collection.create(create_backbone("efficientnet-lite0"), hasher)
    coll.add(X[:100], [f"{i}.jpg" for i in range(100)], root=tmp_path)
    path = tmp_path / "c.hsx"
    coll.save(path)
    coll.add(X[100:110], [f"{i}.jpg" for i in range(100, 110)], root=tmp_path)
    coll.save(path)
    assert _manifest(path)["deltas"] == ["000002"]
    coll.add(X[110:135], [f"{i}.jpg" for i in range(110, 135)], root=tmp_path)  # 10 + 25 of 135 > 25%
    coll.save(path)
    assert "deltas" not in _manifest(path) and len(Collection.open(path)) == 135
