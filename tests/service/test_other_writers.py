"""A served collection changed by another process (session 6, finding 1).

`hashsearch add` / `remove` run from a shell while `hashsearch serve` serves the same folder: the
server answered 500 on every route but /health afterwards (the generation it read was deleted under
it). Now every route answers, and the next request sees the change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hashsearch.collection import Collection

from .conftest import API_KEY, Server, fresh_jpegs

KEY = {"X-API-Key": API_KEY}


def cli(*args) -> subprocess.CompletedProcess:
    """The real `hashsearch` command, in a process of its own."""
    script = Path(sys.executable).parent / "hashsearch"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", "from hashsearch.cli import main; main()"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def coll_path(served_collection, tmp_path):
    path = tmp_path / "srv" / "c.hsx"
    shutil.copytree(served_collection, path)
    return path


def test_the_server_follows_a_cli_add_and_remove(coll_path, tmp_path, cifar_small):
    from hashsearch.service import create_app

    new = tmp_path / "new"
    new.mkdir()
    jpegs = fresh_jpegs(cifar_small, 3, salt=61)
    for name, data in jpegs:
        (new / name).write_bytes(data)
    app = create_app(coll_path, api_key=API_KEY, cache_dir=tmp_path / "thumbs")
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.get("/entries", params={"limit": 1}).json()["total"] == 120
        assert c.get("/search/0").status_code == 200

        done = cli("add", coll_path, new, "--cache-dir", tmp_path / "feat")
        assert done.returncode == 0 and "added 3 entries" in done.stdout, done.stdout + done.stderr
        page = c.get("/entries", params={"offset": 120, "limit": 10})
        assert page.status_code == 200, page.text
        assert page.json()["total"] == 123
        added = {e["key"]: e["id"] for e in page.json()["entries"]}
        assert sorted(added) == sorted(name for name, _ in jpegs)
        for route in ("/stats", "/search/0", f"/search/{added[jpegs[0][0]]}", "/duplicates", "/entries/5"):
            assert c.get(route).status_code == 200, (route, c.get(route).text)
        assert c.get("/stats").json()["count"] == 123 and c.get("/health").json()["count"] == 123
        # The generation the server let go of is deleted by the server (nobody else holds it).
        assert [p.name for p in coll_path.glob("gen-*")] == [Collection.live_generation(coll_path)]
        query = {"image": ("q.jpg", jpegs[1][1], "image/jpeg")}
        hit = c.post("/search", files=query, params={"k": 1, "rerank": 100}).json()["results"][0]
        assert hit["id"] == added[jpegs[1][0]] and hit["hamming"] == 0
        assert c.get(f"/images/{added[jpegs[2][0]]}").content == jpegs[2][1]

        gone = added[jpegs[0][0]]
        done = cli("remove", coll_path, gone, 7)
        assert done.returncode == 0, done.stdout + done.stderr
        assert c.get("/health").json()["count"] == 121  # the first request after the change sees it
        assert c.get(f"/entries/{gone}").status_code == 404 and c.get("/entries/7").status_code == 404
        assert c.get("/entries", params={"limit": 1}).json()["total"] == 121
        assert gone not in [r["id"] for r in c.get("/search/0", params={"k": 200}).json()["results"]]
        assert c.get("/duplicates").status_code == 200

        # The server's own write after the CLI's keeps both (it writes on top of what the CLI saved).
        ((name, data),) = fresh_jpegs(cifar_small, 1, salt=62)
        r = c.post("/images", files=[("images", (name, data, "image/jpeg"))], headers=KEY)
        assert r.status_code == 200 and r.json()["count"] == 122, r.text
    on_disk = Collection.open(coll_path)
    assert len(on_disk) == 122 and on_disk.entries([gone])[0] is None
    assert {e["key"] for e in on_disk.entries(list(added.values())) if e} == {n for n, _ in jpegs[1:]}
    # No generation is left behind once its readers let go of it (the next save removes it).
    held = Collection.open(coll_path)  # a reader holding the live generation through the next save
    on_disk.close()
    app.state.hs.coll.close()
    done = cli("remove", coll_path, 8)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in coll_path.glob("gen-*")) == [held.generation, Collection.live_generation(coll_path)]
    assert held.entries([8])[0]["id"] == 8  # read from the generation it holds, still on disk
    held.close()
    done = cli("remove", coll_path, 9)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in coll_path.glob("gen-*")] == [Collection.live_generation(coll_path)]


def test_a_collection_that_cannot_be_reopened_keeps_being_served(coll_path, tmp_path):
    """A save by another process that cannot be opened (here: its manifest damaged) is logged, and the
    server keeps answering from the generation it holds."""
    from hashsearch.service import create_app

    app = create_app(coll_path, api_key=API_KEY, cache_dir=tmp_path / "thumbs")
    live = Collection.live_generation(coll_path)
    broken = f"gen-{int(live.split('-')[1]) + 1:06d}"
    shutil.copytree(coll_path / live, coll_path / broken)
    (coll_path / broken / "manifest.json").write_text("{not json")
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        (coll_path / "CURRENT").write_text(broken + "\n")
        assert c.get("/entries", params={"limit": 1}).json()["total"] == 120
        assert c.get("/search/3").status_code == 200
        (coll_path / "CURRENT").write_text(live + "\n")
        assert c.get("/entries/3").status_code == 200


def test_the_server_follows_an_index_overwrite_with_another_backbone_size(coll_path, tmp_path, cifar_small):
    """`index --overwrite` with other settings (64 px, lsh 16 bits): the server reopens it and its
    queries go through the new backbone (the extractor is made again), not the 128 px one."""
    from hashsearch.service import create_app

    app = create_app(coll_path, cache_dir=tmp_path / "thumbs")
    ships = cifar_small / "test" / "ship"
    query = sorted(ships.glob("*.jpg"))[0]
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        files = {"image": ("q.jpg", query.read_bytes(), "image/jpeg")}
        assert c.post("/search", files=files).status_code == 200  # the 128 px extractor is made
        done = cli(
            "index", ships, "--out", coll_path, "--overwrite", "--method", "lsh", "--bits", "16",
            "--input-size", "64", "--cache-dir", tmp_path / "feat",
        )  # fmt: skip
        assert done.returncode == 0 and f"replaced {coll_path}: 4 entries" in done.stdout, done.stderr
        stats = c.get("/stats").json()
        assert stats["count"] == 4 and stats["n_bits"] == 16 and stats["input_size"] == 64
        hits = c.post("/search", files=files, params={"k": 4, "rerank": 4}).json()["results"]
        assert [h["key"] for h in hits][0] == query.name and hits[0]["hamming"] == 0
        assert sorted(h["key"] for h in hits) == sorted(p.name for p in ships.glob("*.jpg"))
