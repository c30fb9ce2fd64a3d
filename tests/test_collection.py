"""Collections: search, add/remove, the on-disk format, atomic saves, damage detection."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.collection import Collection, CollectionError
from hashsearch.hashing import create_hasher


def make_collection(n=300, d=32, bits=16, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d)).astype(np.float32)
    hasher = create_hasher("itq", n_bits=bits, seed=0).fit(X)
    coll = Collection.create(create_backbone("efficientnet-lite0"), hasher)
    coll.add(X, [f"img/{i}.jpg" for i in range(n)], [f"c{i % 3}" for i in range(n)], root=".")
    return coll, X


def record(entry):
    """An entry without the machine-specific path and the (here unknown) digest."""
    return None if entry is None else {k: entry[k] for k in ("id", "key", "label")}


def test_search_round_trips_through_save_and_open(tmp_path):
    coll, X = make_collection()
    before = coll.search(X[:5], k=7)
    rr_before = coll.search(X[:5], k=7, rerank=50)
    coll.save(tmp_path / "c.hsx")
    back = Collection.open(tmp_path / "c.hsx")
    after = back.search(X[:5], k=7)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.distances, after.distances)
    np.testing.assert_array_equal(rr_before.ids, back.search(X[:5], k=7, rerank=50).ids)
    assert record(back.entries([3])[0]) == {"id": 3, "key": "img/3.jpg", "label": "c0"}
    assert back.info()["count"] == 300 and back.info()["labels"] == {"c0": 100, "c1": 100, "c2": 100}


def test_rerank_puts_the_exact_feature_match_first():
    coll, X = make_collection()
    res = coll.search(X[10:20], k=3, rerank=100)
    np.testing.assert_array_equal(res.ids[:, 0], np.arange(10, 20))
    assert np.all(res.distances[:, 0] < 0.1)


def test_add_and_remove_persist(tmp_path):
    coll, X = make_collection()
    coll.save(tmp_path / "c.hsx")
    coll = Collection.open(tmp_path / "c.hsx")
    assert coll.remove([0, 1, 2, 999]) == 3
    new = coll.add(X[:2] + 0.01, ["new/a.jpg", "new/b.jpg"], ["c9", "c9"], root=".")
    coll.save(tmp_path / "c.hsx")
    back = Collection.open(tmp_path / "c.hsx")
    assert len(back) == 299
    ids = back.search(X[:3], k=300).ids
    assert not np.isin([0, 1, 2], ids).any() and np.isin(new, ids).all()
    assert [record(e) for e in back.entries([0, int(new[0])])] == [
        None,
        {"id": int(new[0]), "key": "new/a.jpg", "label": "c9"},
    ]
    assert len(list((tmp_path / "c.hsx").glob("gen-*"))) == 1


def test_damaged_file_is_detected(tmp_path):
    coll, _ = make_collection()
    gen = coll.save(tmp_path / "c.hsx")
    codes = gen / "index" / "codes.u8"
    data = bytearray(codes.read_bytes())
    data[-1] ^= 0xFF
    codes.write_bytes(bytes(data))
    with pytest.raises(CollectionError, match="damaged"):
        Collection.open(tmp_path / "c.hsx")


def test_other_format_version_is_refused(tmp_path):
    coll, _ = make_collection()
    gen = coll.save(tmp_path / "c.hsx")
    m = json.loads((gen / "manifest.json").read_text())
    m["version"] = 99
    (gen / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CollectionError, match="version 99"):
        Collection.open(tmp_path / "c.hsx")


def test_not_a_collection(tmp_path):
    with pytest.raises(CollectionError, match="not a hashsearch collection"):
        Collection.open(tmp_path)
    # A mistyped name is said to be missing, not "not a collection"; a file is said to be a file.
    with pytest.raises(CollectionError, match=r"photos\.hsx does not exist; build a collection there"):
        Collection.open(tmp_path / "photos.hsx")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CollectionError, match=r"notes\.txt is a file, not a collection"):
        Collection.open(tmp_path / "notes.txt")


SAVER = textwrap.dedent(
    """
    import sys, numpy as np
    from hashsearch.backbones import create_backbone
    from hashsearch.collection import Collection
    from hashsearch.hashing import create_hasher
    path = sys.argv[1]
    coll = Collection.open(path)
    X = np.random.default_rng(1).normal(size=(100_000, 32)).astype(np.float32)
    coll.add(X, [f"more/{i}.jpg" for i in range(len(X))])
    print("saving", flush=True)
    while True:
        coll.save(path)
    """
)


def test_killed_save_leaves_a_loadable_collection(tmp_path):
    """Kill a process at several points of repeated large saves; the collection always opens,
    holding either the previous generation or the new one, never a mix."""
    coll, X = make_collection()
    path = tmp_path / "c.hsx"
    coll.save(path)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    for delay in (0.05, 0.3, 0.7, 1.2):
        before = len(Collection.open(path))
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"saving"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        back = Collection.open(path)  # verifies every checksum
        assert len(back) in (before, before + 100_000)
        assert back.entries([0])[0]["key"] == "img/0.jpg"
        last = int(back.index.ids.max())
        assert back.entries([last])[0] is not None
        np.testing.assert_array_equal(back.search(X[:1], k=1).distances, [[0]])


def test_search_records_filters_by_label_beyond_the_first_candidates():
    """Few entries carry the label: the search fetches further until k of them are found, in the
    order `search` ranks them, and joins each with its record."""
    coll, X = make_collection(n=600)
    coll.add(X[:5] + 0.5, [f"rare/{i}.jpg" for i in range(5)], ["rare"] * 5, root=".")
    hits = coll.search_records(X[:1], k=3, label="rare")[0]
    assert len(hits) == 3 and {h["label"] for h in hits} == {"rare"}
    ranked = [int(i) for i in coll.search(X[:1], k=len(coll)).ids[0] if i >= 600]
    assert [h["id"] for h in hits] == ranked[:3]
    assert hits[0]["key"].startswith("rare/") and Path(hits[0]["path"]).is_absolute()
    assert coll.search_records(X[:1], k=3, label="no such label") == [[]]


def test_a_label_no_entry_has_stops_after_the_first_candidates(tmp_path, monkeypatch):
    """An unknown (mistyped) label: one search of the first candidates, not one widened to every
    entry; a label whose entries are all removed (saved or not) counts as unknown, a label only
    added since the save as known."""
    coll, X = make_collection(n=3000)
    coll.add(X[:5] + 0.5, [f"rare/{i}.jpg" for i in range(5)], ["rare"] * 5, root=".")
    coll.save(tmp_path / "c.hsx")
    ks = []
    search = coll.search
    monkeypatch.setattr(coll, "search", lambda *a, **kw: ks.append(kw["k"]) or search(*a, **kw))
    assert coll.search_records(X[:2], k=3, label="no such label") == [[], []] and ks == [200, 200]
    ks.clear()
    assert len(coll.search_records(X[:1], k=3, label="rare")[0]) == 3 and ks[-1] > 200  # widened to find them
    rare = [int(i) for i in coll.search(X[:1], k=len(coll)).ids[0] if i >= 3000]
    coll.remove(np.array(rare))
    assert coll.search_records(X[:1], k=3, label="rare") == [[]]
    coll.add(X[:1] + 0.5, ["late/0.jpg"], ["late"], root=".")
    assert len(coll.search_records(X[:1], k=3, label="late")[0]) == 1
    coll.save(tmp_path / "c.hsx")
    assert coll.search_records(X[:1], k=3, label="rare") == [[]]


def test_search_records_excludes_an_id_and_reports_stored_hamming_after_rerank():
    coll, X = make_collection()
    plain = coll.search_records(X[7:8], k=5)[0]
    assert plain[0]["id"] == 7 and plain[0]["hamming"] == 0
    more = coll.search_records(X[7:8], k=5, exclude=7)[0]
    assert [h["id"] for h in more] == [h["id"] for h in coll.search_records(X[7:8], k=6)[0] if h["id"] != 7]
    hits = coll.search_records(X[7:9], k=4, rerank=50)
    codes = coll.hasher.encode(X[7:9])
    from hashsearch.codes import hamming_distances

    for q, row in enumerate(hits):
        stored = coll.index.get_codes(np.array([h["id"] for h in row]))
        assert [h["hamming"] for h in row] == hamming_distances(codes[q : q + 1], stored)[0].tolist()
        assert [h["rerank_distance"] for h in row] == sorted(h["rerank_distance"] for h in row)
    with pytest.raises(ValueError, match="radius"):
        coll.search_records(X[:1], radius=17)
