"""A collection's re-rank store (full, pca-N, int8, pq-M) on real CIFAR-10 features: chosen at
index time, saved, reopened, added to, removed from, searched coarse-to-fine (library, HTTP, CLI)."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashsearch.backbones import create_backbone
from hashsearch.collection import RERANK_STORE_FILE, Collection, CollectionError
from hashsearch.hashing import create_hasher
from tests.conftest import CLASSES, cifar_archive

pytestmark = pytest.mark.filterwarnings("ignore:pq-.* fitted on")  # small test sets; the warning has its own test

#: Database images per class (pq-M fits its 256 centroids a sub-vector on at least 256 features).
PER_CLASS = 30
N_FIRST = 260  # indexed first (fits the store); the rest are added to the reopened collection
STORES = ["full", "pca-128", "int8", "pq-64"]
#: Bytes one stored row takes, for 1280-d features.
ROW_BYTES = {"full": 2560, "pca-128": 256, "int8": 1280, "pq-64": 64}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """300 CIFAR-10 (JPEG) training images (30 a class, archive order) written to a folder, 40 test
    images as queries, and their EfficientNet-Lite0 features at 64 px (1280-d, float32)."""
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("rerank_db")
    want = {"train": PER_CLASS, "test": 4}
    taken: dict[tuple[str, str], int] = {}
    files: dict[str, list[Path]] = {"train": [], "test": []}
    with tarfile.open(cifar_archive(), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            split, cls = parts[-3], parts[-2]
            if taken.get((split, cls), 0) >= want[split]:
                continue
            dest = root / split / cls / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
            files[split].append(dest)
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            if len(taken) == 2 * len(CLASSES) and all(taken[k] >= want[k[0]] for k in taken):
                break
    backbone = create_backbone("efficientnet-lite0", input_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        feats = {}
        for split, paths in files.items():
            batch = np.stack(
                [backbone.preprocess(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in paths]
            )
            with torch.no_grad():
                feats[split] = np.asarray(backbone.forward(batch), np.float32)
    finally:
        torch.set_num_threads(threads)
    X, Q = feats["train"], feats["test"]
    assert X.shape == (10 * PER_CLASS, 1280) and Q.shape == (40, 1280)
    hasher = create_hasher("itq", n_bits=32, seed=0).fit(X[:N_FIRST])
    return {
        "root": root,
        "backbone": backbone,
        "hasher": hasher,
        "X": X,
        "Q": Q,
        "keys": [str(p) for p in files["train"]],
        "labels": [p.parent.name for p in files["train"]],
    }


def build(real, spec: str, n: int = N_FIRST) -> Collection:
    coll = Collection.create(real["backbone"], real["hasher"], rerank_store=spec)
    coll.add(real["X"][:n], real["keys"][:n], real["labels"][:n], root=real["root"] / "train")
    return coll


def manifest(path: Path) -> dict:
    return json.loads((path / (path / "CURRENT").read_text().strip() / "manifest.json").read_text())


@pytest.mark.parametrize("spec", STORES)
def test_each_store_saves_reopens_adds_removes_and_searches(real, spec, tmp_path):
    X, Q = real["X"], real["Q"]
    coll = build(real, spec)
    assert coll.rerank_store_spec == spec and coll.rerank_store.is_fitted
    before = coll.search(Q, k=10, rerank=50)
    coll.save(tmp_path / "c.hsx")
    first = manifest(tmp_path / "c.hsx")
    assert first["rerank_store"] == spec and first["version"] == (2 if spec == "full" else 3)

    back = Collection.open(tmp_path / "c.hsx")
    assert back.rerank_store_spec == spec and back.info()["rerank_store"] == spec
    after = back.search(Q, k=10, rerank=50)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.distances, before.distances)

    new = back.add(X[N_FIRST:], real["keys"][N_FIRST:], real["labels"][N_FIRST:], root=real["root"] / "train")
    removed = np.arange(20)
    assert back.remove(removed) == 20
    back.save(tmp_path / "c.hsx")
    second = manifest(tmp_path / "c.hsx")
    if spec != "full":  # the added features went into the same fitted store, not a refitted one
        assert second["files"][RERANK_STORE_FILE] == first["files"][RERANK_STORE_FILE]

    again = Collection.open(tmp_path / "c.hsx")
    assert len(again) == len(X) - 20 and again.rerank_store_spec == spec
    # Every live entry has its row (base and delta parts), and only those: removed ids raise below.
    assert len(again.features_of(again.index.ids)) == len(again)
    res = again.search(Q, k=10, rerank=50)
    assert (res.ids >= 0).all() and not np.isin(res.ids, removed).any()
    # The added images are found coarse-to-fine by their own features, first.
    own = again.search(X[N_FIRST:], k=1, rerank=50)
    assert np.mean(own.ids[:, 0] == new) >= (0.9 if spec.startswith("pq") else 1.0)
    # features_of gives (approximate) features back, whatever the store keeps: each added image's
    # is nearer its own feature than any other image's; full within float16 rounding, int8 within
    # its steps (0.034 at most here: values outside the range it was fitted on are clipped).
    f = np.asarray(again.features_of(new), np.float32)
    assert f.shape == (len(new), 1280)
    nearest = np.linalg.norm(f[:, None] - X[None], axis=2).argmin(1)
    np.testing.assert_array_equal(nearest, np.arange(N_FIRST, len(X)))
    if spec in ("full", "int8"):
        rel = np.linalg.norm(f - X[N_FIRST:], axis=1) / np.linalg.norm(X[N_FIRST:], axis=1)
        assert rel.max() < {"full": 0.001, "int8": 0.05}[spec]
    with pytest.raises(KeyError):
        again.features_of(removed[:1])


@pytest.mark.parametrize("spec, least", [("pca-128", 0.85), ("int8", 0.95), ("pq-64", 0.75)])
def test_compact_stores_rank_close_to_full(real, spec, least):
    """Top-10 of coarse-to-fine through a compact store against the full features' top-10
    (40 queries, 300 images; ``pytest -s`` prints the shares: 0.93 pca-128, 1.00 int8, 0.87 pq-64
    when written). Hamming ranking alone shares 0.40, so the bounds tell a re-ranking store from none."""
    X, Q = real["X"], real["Q"]
    full = build(real, "full", len(X)).search(Q, k=10, rerank=100).ids
    ranked = build(real, spec, len(X)).search(Q, k=10, rerank=100).ids
    hamming = build(real, "full", len(X)).search(Q, k=10).ids

    def overlap(a, b):
        return np.mean([len(set(a[i]) & set(b[i])) / 10 for i in range(len(a))])

    print(
        f"\n{spec}: top-10 shared with full {overlap(ranked, full):.2f}; Hamming ranking {overlap(hamming, full):.2f}"
    )
    assert overlap(hamming, full) < 0.6
    assert overlap(ranked, full) >= least


def test_rerank_data_on_disk_shrinks_as_the_store_says(real, tmp_path):
    sizes = {}
    for spec in STORES:
        gen = build(real, spec).save(tmp_path / f"{spec}.hsx")
        rows = np.load(gen / "features.npy", mmap_mode="r")
        assert rows.shape == (N_FIRST, ROW_BYTES[spec] // rows.dtype.itemsize)
        sizes[spec] = (gen / "features.npy").stat().st_size
        assert sizes[spec] - 128 == N_FIRST * ROW_BYTES[spec]  # the .npy header is 128 bytes
        assert (gen / RERANK_STORE_FILE).is_file() == (spec != "full")
    # 1280-d features: int8 halves the rows, pca-128 is a tenth of them, pq-64 a fortieth.
    assert {s: (sizes["full"] - 128) / (sizes[s] - 128) for s in STORES} == {
        "full": 1,
        "pca-128": 10,
        "int8": 2,
        "pq-64": 40,
    }


def test_a_collection_saved_before_the_stores_opens_as_full_unchanged(real, tmp_path):
    coll = build(real, "full")
    before = coll.search(real["Q"], k=10, rerank=50)
    gen = coll.save(tmp_path / "c.hsx")
    m = json.loads((gen / "manifest.json").read_text())
    del m["rerank_store"]  # what a hashsearch before the stores wrote: version 2, features.npy float16
    (gen / "manifest.json").write_text(json.dumps(m))
    old = Collection.open(tmp_path / "c.hsx")
    assert old.rerank_store_spec == "full" and old.rerank_store.dim_ == 1280
    after = old.search(real["Q"], k=10, rerank=50)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(old.features_of(np.arange(5)), real["X"][:5].astype(np.float16))


def test_a_manifest_that_does_not_match_its_store_is_refused(real, tmp_path):
    gen = build(real, "pca-128").save(tmp_path / "c.hsx")
    m = json.loads((gen / "manifest.json").read_text())
    for change, says in [({"rerank_store": "pca-64"}, "manifest names 'pca-64'"), ({"version": 2}, "version 2")]:
        (gen / "manifest.json").write_text(json.dumps({**m, **change}))
        with pytest.raises(CollectionError, match=says):
            Collection.open(tmp_path / "c.hsx")


def test_a_store_that_cannot_fit_adds_nothing(real):
    coll = Collection.create(real["backbone"], real["hasher"], rerank_store="pq-64")
    with pytest.raises(ValueError, match="at least 256 features"):
        coll.add(real["X"][:100], real["keys"][:100], root=real["root"])
    assert len(coll) == 0 and len(coll._feature_ids) == 0 and not coll.rerank_store.is_fitted
    with pytest.raises(ValueError, match="pca-N, pq-M"):
        Collection.create(real["backbone"], real["hasher"], rerank_store="bogus")


def test_more_like_this_over_http_reranks_through_the_store(real, tmp_path):
    """GET /search/{id}?rerank= on a real server over a pca-128 collection: the stored image's
    features come back from the store (reconstructed to 1280-d) and rank as the library does."""
    import httpx
    import uvicorn

    from hashsearch.service import create_app

    coll = build(real, "pca-128")
    coll.save(tmp_path / "c.hsx")
    coll = Collection.open(tmp_path / "c.hsx")
    want = coll.search_records(coll.features_of(np.array([7])), k=5, rerank=50, exclude=7)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(tmp_path / "c.hsx", cache_dir=tmp_path / "cache"), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline and thread.is_alive():
            time.sleep(0.05)
        got = httpx.get(f"http://127.0.0.1:{port}/search/7", params={"k": 5, "rerank": 50}, timeout=60)
        assert got.status_code == 200, got.text
        assert httpx.get(f"http://127.0.0.1:{port}/stats", timeout=60).json()["rerank_store"] == "pca-128"
    finally:
        server.should_exit = True
        thread.join(10)
    hits = got.json()["results"]
    assert [h["id"] for h in hits] == [h["id"] for h in want] and 7 not in [h["id"] for h in hits]
    np.testing.assert_allclose([h["rerank_distance"] for h in hits], [h["rerank_distance"] for h in want], rtol=1e-5)


runner = CliRunner()


def cli(*args, ok=True):
    from hashsearch.cli import app

    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_cli_index_with_a_store_then_info_search_add_remove(cifar_small, tmp_path):
    out, cache = tmp_path / "c.hsx", tmp_path / "cache"
    common = ("--input-size", 64, "--cache-dir", cache)
    cli("index", cifar_small / "test", "--out", out, "-m", "itq", "--bits", 16, "--rerank-store", "int8", *common)
    info = json.loads(cli("info", out))
    assert info["rerank_store"] == "int8" and info["count"] == 40
    query = sorted((cifar_small / "test" / "ship").glob("*.jpg"))[0]
    hits = json.loads(cli("search", out, query, "-k", 5, "--rerank", 20, "--json", "--cache-dir", cache))[0]["results"]
    assert hits[0]["path"] == str(query) and hits[0]["distance"] < hits[1]["distance"] / 5
    cli("add", out, cifar_small / "train" / "frog", "--cache-dir", cache)
    cli("remove", out, 0, 1)
    info = json.loads(cli("info", out))
    assert info["count"] == 46 and info["rerank_store"] == "int8"
    # The rows are in parts (the base's 40, the added 8 in a delta); the 2 removed stay, hidden by
    # tombstones, until a compaction.
    gen = out / (out / "CURRENT").read_text().strip()
    parts = [np.load(p) for p in sorted(gen.glob("features*.npy"))]
    assert sorted(len(p) for p in parts if len(p)) == [8, 40]
    assert all(p.shape[1:] == (1280,) and p.dtype == np.uint8 for p in parts)


def test_cli_refuses_an_unknown_store_in_one_line(tmp_path):
    text = cli("index", tmp_path, "--out", tmp_path / "c.hsx", "--rerank-store", "bogus", ok=False)
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "--rerank-store" in lines[0] and "'bogus'" in lines[0]
    assert "full, int8, pca-N, pq-M" in lines[0]


def test_hamming_ties_are_ordered_by_the_stored_features(real):
    """Codes collide (a fresh user's flowers12 under bihalf-spectral: 53 daisies shared one code and the query
    photo came 46th by id): entries at the same Hamming distance come by feature distance, through every store.
    An 8-bit hasher here makes ties everywhere."""
    from hashsearch.codes import hamming_distances

    X = real["X"][:N_FIRST]
    short = create_hasher("itq", n_bits=8, seed=0).fit(X)
    for spec in ("full", "pca-128"):
        coll = Collection.create(real["backbone"], short, rerank_store=spec)
        coll.add(X, real["keys"][:N_FIRST], real["labels"][:N_FIRST], root=real["root"] / "train")
        for q in (0, 77, 200):  # database images as queries: each is its own nearest feature
            res, by_id = coll.search(X[q : q + 1], k=10), coll.search(X[q : q + 1], k=10, ties="id")
            assert res.ids[0, 0] == q and res.distances[0, 0] == 0
            # Still Hamming ranking: the same distances as ties by id, each the true one.
            np.testing.assert_array_equal(res.distances, by_id.distances)
            true = hamming_distances(short.encode(X[q : q + 1]), short.encode(X[res.ids[0]]))[0]
            np.testing.assert_array_equal(res.distances[0], true)
            # Within each distance, nondecreasing feature distance (as the store keeps them).
            kept = coll.rerank_store.decode(coll._rows_of(res.ids[0]))
            fd = ((kept - coll.rerank_store.query(X[q : q + 1])[0]) ** 2).sum(1)
            for d in set(res.distances[0].tolist()):
                same = fd[res.distances[0] == d]
                assert (np.diff(same) >= 0).all()
        # A radius lookup orders its ties the same way; rerank is untouched.
        assert coll.search(X[5:6], k=3, radius=0).ids[0, 0] == 5
    with pytest.raises(ValueError, match="ties"):
        coll.search(X[:1], k=3, ties="random")
