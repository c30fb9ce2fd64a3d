"""Writes through the API against the collection on disk (issue 18, items 2, 3, 8, 14, 15).

Uploads live in the collection folder and resolve from any working directory and after the
collection moves; content already indexed is answered with its id, not added again; a save that
fails leaves the server's memory equal to the disk; no response carries a server path; deleting
an image deletes the files the service stored for it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from hashsearch.collection import Collection
from hashsearch.service import create_app

from .conftest import API_KEY, Server, fresh_jpegs

KEY = {"X-API-Key": API_KEY}


def _files(items, field="images"):
    return [(field, (name, data, "image/jpeg")) for name, data in items]


@pytest.fixture
def coll_path(served_collection, tmp_path):
    path = tmp_path / "srv" / "c.hsx"
    shutil.copytree(served_collection, path)
    return path


def _serve(path, tmp_path, **kw):
    return Server(create_app(path, api_key=API_KEY, cache_dir=tmp_path / "cache", **kw))


def test_uploads_live_in_the_collection_and_resolve_from_any_directory_and_after_a_move(
    coll_path, tmp_path, cifar_small, monkeypatch
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ((name, data),) = fresh_jpegs(cifar_small, 1, salt=20)
    monkeypatch.chdir(tmp_path / "a")
    with _serve(Path(os.path.relpath(coll_path)), tmp_path) as s:  # a relative collection path, as a user types it
        new = httpx.post(s.url + "/images", files=_files([(name, data)]), headers=KEY).json()["ids"][0]
    stored = list((coll_path / "uploads").iterdir())
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert not list((tmp_path / "a").rglob("*.jpg"))  # nothing beside the server's working directory
    monkeypatch.chdir(tmp_path / "b")
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url) as c:
        assert c.get(f"/images/{new}").content == data
        assert c.get(f"/entries/{new}").json()["key"] == stored[0].name
        assert c.get(f"/thumbs/{new}").status_code == 200
    moved = tmp_path / "elsewhere" / "moved.hsx"
    shutil.move(coll_path, moved)
    monkeypatch.chdir(tmp_path)
    with _serve(moved, tmp_path / "2") as s, httpx.Client(base_url=s.url) as c:
        assert c.get(f"/images/{new}").content == data
        assert c.get("/images/0").status_code == 200  # the indexed folder did not move


def test_content_already_indexed_is_answered_with_its_id(coll_path, tmp_path, cifar_small):
    indexed = sorted((cifar_small / "test").rglob("*.jpg"))[:2]
    fresh = fresh_jpegs(cifar_small, 1, salt=21)
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        ids = {c.get(f"/entries/{i}").json()["key"]: i for i in range(120)}
        want = [ids[p.relative_to(cifar_small).as_posix()] for p in indexed]
        # Two indexed files under new names, a new one, and the new one again in the same request.
        files = _files(
            [
                ("again-1.jpg", indexed[0].read_bytes()),
                ("again-2.jpg", indexed[1].read_bytes()),
                fresh[0],
                ("copy.jpg", fresh[0][1]),
            ]
        )
        out = c.post("/images", files=files, headers=KEY).json()
        assert len(out["ids"]) == 1 and out["count"] == 121 and not out["errors"]
        assert out["duplicates"] == [
            {"file": "again-1.jpg", "id": want[0]},
            {"file": "again-2.jpg", "id": want[1]},
            {"file": "copy.jpg", "id": out["ids"][0]},
        ]
        # Uploaded again later, and in a background job: the id the first upload got.
        again = c.post("/images", files=_files([fresh[0]]), headers=KEY).json()
        assert again["ids"] == [] and again["duplicates"] == [{"file": fresh[0][0], "id": out["ids"][0]}]
        job = c.post("/images", files=_files([fresh[0]]), data={"background": "true"}, headers=KEY).json()
        while (j := c.get(f"/jobs/{job['id']}").json())["state"] == "running":
            pass
        assert (
            j["state"] == "done" and j["ids"] == [] and j["duplicates"] == [{"file": fresh[0][0], "id": out["ids"][0]}]
        )
        # keep_duplicates adds it anyway.
        kept = c.post("/images", files=_files([fresh[0]]), data={"keep_duplicates": "true"}, headers=KEY).json()
        assert len(kept["ids"]) == 1 and kept["ids"][0] != out["ids"][0] and kept["count"] == 122
    assert len(Collection.open(coll_path)) == 122


def _failing_fsync(monkeypatch):
    """Every fsync of a save fails as on a full disk (what `Collection.save` meets, not a stub of it)."""
    import hashsearch.collection as collection

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(collection, "fsync_path", full)


def test_a_failed_save_leaves_memory_equal_to_the_disk(coll_path, tmp_path, cifar_small, monkeypatch):
    ((name, data),) = fresh_jpegs(cifar_small, 1, salt=22)
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        before = c.get("/stats").json()["count"]
        with monkeypatch.context() as m:
            _failing_fsync(m)
            r = c.post("/images", files=_files([(name, data)]), headers=KEY)
            assert r.status_code == 503 and r.headers["retry-after"]
            detail = r.json()["detail"]
            assert detail.startswith(
                "adding the images failed: the collection could not be saved on the server, so nothing changed"
            )
            assert str(tmp_path) not in detail and "Traceback" not in detail
            d = c.delete("/images/5", headers=KEY)
            assert d.status_code == 503 and d.json()["detail"].startswith("removing image 5 failed")
            # No phantom change in memory: not found, not counted, and the removed one still there.
            assert c.get("/stats").json()["count"] == before
            hits = c.post("/search", files={"image": (name, data, "image/jpeg")}, params={"k": 1000}).json()["results"]
            assert len(hits) == before and max(x["id"] for x in hits) < before
            assert c.get("/entries/5").status_code == 200 and c.get("/images/5").status_code == 200
            assert not (coll_path / "uploads").exists() or not any((coll_path / "uploads").iterdir())
        disk = Collection.open(coll_path)
        assert len(disk) == before and disk.entries([5])[0] is not None
        # The disk works again: the same requests succeed, and the disk has them.
        assert c.post("/images", files=_files([(name, data)]), headers=KEY).json()["count"] == before + 1
        assert c.delete("/images/5", headers=KEY).json()["count"] == before
    assert len(Collection.open(coll_path)) == before and Collection.open(coll_path).entries([5])[0] is None


def test_a_killed_saves_leftover_generation_does_not_wedge_writes(coll_path, tmp_path, cifar_small):
    """The issue's reproduction: the live gen-N copied to gen-N+1, as a save killed before CURRENT moved leaves it."""
    live = (coll_path / "CURRENT").read_text().strip()
    shutil.copytree(coll_path / live, coll_path / f"gen-{int(live.split('-')[1]) + 1:06d}")
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/images", files=_files(fresh_jpegs(cifar_small, 1, salt=23)), headers=KEY)
        assert r.status_code == 200 and r.json()["count"] == 121, r.text
        assert c.delete("/images/7", headers=KEY).status_code == 200
    assert len(Collection.open(coll_path)) == 120


def test_no_response_carries_a_server_path(coll_path, tmp_path, cifar_small):
    """Results, records, errors and 404s name ids and keys, never where files are on the server."""
    moved_away = sorted((cifar_small / "test" / "cat").glob("*.jpg"))[0]
    secrets = {str(tmp_path), str(cifar_small), str(coll_path), os.getcwd()}
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        key = moved_away.relative_to(cifar_small).as_posix()
        image_id = next(i for i in range(120) if c.get(f"/entries/{i}").json()["key"] == key)
        hidden = moved_away.with_suffix(".away")
        moved_away.rename(hidden)
        try:
            r = c.get(f"/images/{image_id}")
            assert r.status_code == 404
            assert r.json()["detail"].startswith(f"the file of image {image_id} ({key}) cannot be read on the server")
            assert c.get(f"/thumbs/{image_id}").status_code == 404
            bodies = [r.text, c.get(f"/thumbs/{image_id}").text]
        finally:
            hidden.rename(moved_away)
        new = c.post("/images", files=_files(fresh_jpegs(cifar_small, 1, salt=24)), headers=KEY).json()
        q = {"image": ("q.jpg", moved_away.read_bytes(), "image/jpeg")}
        for resp in [
            c.post("/search", files=q, params={"k": 200}),
            c.post("/search", files=q, params={"rerank": 50}),
            c.get("/search/3", params={"k": 200}),
            c.get(f"/entries/{new['ids'][0]}"),
            c.get("/stats"),
            c.get("/entries/999"),
            c.get("/jobs/nope"),
            c.delete("/images/999", headers=KEY),
            c.post("/images", files=_files([("bad.jpg", b"nope")]), headers=KEY),
        ]:
            bodies.append(resp.text)
        results = c.get("/search/3", params={"k": 200}).json()["results"]
    assert all(set(x) == {"id", "key", "label", "distance"} for x in results)
    assert {x["key"] for x in results} >= {key}
    for body in bodies:
        for secret in secrets:
            assert secret not in body, (secret, body[:300])


def test_delete_removes_the_stored_upload_and_thumbnail(coll_path, tmp_path, cifar_small):
    items = fresh_jpegs(cifar_small, 2, salt=25)
    with _serve(coll_path, tmp_path) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        ids = c.post("/images", files=_files(items), headers=KEY).json()["ids"]
        assert c.get(f"/thumbs/{ids[0]}").status_code == 200 and c.get("/thumbs/4").status_code == 200
        uploads = sorted((coll_path / "uploads").iterdir())
        thumbs = set((tmp_path / "cache" / "thumbs").iterdir())
        assert len(uploads) == 2 and len(thumbs) == 2
        assert c.delete(f"/images/{ids[0]}", headers=KEY).status_code == 200
        left = sorted((coll_path / "uploads").iterdir())
        assert len(left) == 1 and left[0].read_bytes() == items[1][1]
        assert len(set((tmp_path / "cache" / "thumbs").iterdir())) == 1
        # An indexed image: out of the index and its thumbnail gone, its file (not the service's) kept.
        original = cifar_small / c.get("/entries/4").json()["key"]
        assert c.delete("/images/4", headers=KEY).status_code == 200
        assert original.is_file() and not list((tmp_path / "cache" / "thumbs").iterdir())
        # An upload kept twice (keep_duplicates): the file stays until no entry uses it.
        a = c.post("/images", files=_files([items[1]]), data={"keep_duplicates": "true"}, headers=KEY).json()["ids"][0]
        assert c.delete(f"/images/{a}", headers=KEY).status_code == 200 and left[0].is_file()
        assert c.delete(f"/images/{ids[1]}", headers=KEY).status_code == 200 and not left[0].exists()
    reopened = Collection.open(coll_path)
    assert len(reopened) == 119 and reopened.entries(np.array(ids))[0] is None
