"""Every route and every error case, against the real server on loopback."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from hashsearch.collection import Collection

from .conftest import fresh_jpegs

KEY = {"X-API-Key": "test-key-123"}  # the key of the `server` fixture (conftest.API_KEY)


def _test_images(cifar_small, n=3):
    return sorted((Path(cifar_small) / "test").rglob("*.jpg"))[:n]


def _upload(path, ctype="image/jpeg", name=None):
    return {"image": (name or Path(path).name, Path(path).read_bytes(), ctype)}


def _png(w, h, payload=b""):
    """A valid PNG header claiming w x h pixels (a decompression bomb when large)."""

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(payload))
        + chunk(b"IEND", b"")
    )


def test_health_stats_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    s = client.get("/stats").json()
    assert s["count"] == 120 and s["n_bits"] == 32 and s["method"] == "dlbhc"
    assert s["backbone"] == "efficientnet-lite0" and s["mutations_enabled"] is True
    assert sum(s["labels"].values()) == 120 and len(s["labels"]) == 10
    paths = client.get("/openapi.json").json()["paths"]
    for route in [
        "/search",
        "/search/{image_id}",
        "/images/{image_id}",
        "/thumbs/{image_id}",
        "/images",
        "/entries",
        "/stats",
        "/health",
        "/jobs/{job_id}",
    ]:
        assert route in paths


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "hashsearch" in r.text and "/static/app.js" in r.text
    assert client.get("/static/app.js").status_code == 200


def test_search_upload_modes(client, cifar_small):
    q = _test_images(cifar_small, 1)[0]
    label = q.parent.name
    r = client.post("/search", files=_upload(q), params={"k": 10})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    # The query itself is indexed; a result names it by its key, relative to the indexed folder.
    assert len(res) == 10 and res[0]["distance"] == 0 and res[0]["key"] == q.relative_to(cifar_small).as_posix()
    assert all(set(x) == {"id", "key", "label", "distance"} for x in res)
    assert [x["distance"] for x in res] == sorted(x["distance"] for x in res)
    assert Counter(x["label"] for x in res)[label] >= 6
    rad = client.post("/search", files=_upload(q), params={"k": 50, "radius": 1}).json()
    assert rad["mode"] == "radius" and all(x["distance"] <= 1 for x in rad["results"])
    rr = client.post("/search", files=_upload(q), params={"k": 5, "rerank": 50}).json()
    assert rr["mode"] == "rerank" and len(rr["results"]) == 5
    assert all("rerank_distance" in x and "hamming" in x for x in rr["results"])
    d = [x["rerank_distance"] for x in rr["results"]]
    assert d == sorted(d) and d[0] < 1e-2
    other = "truck" if label != "truck" else "cat"
    f = client.post("/search", files=_upload(q), params={"k": 4, "label": other}).json()["results"]
    assert len(f) == 4 and {x["label"] for x in f} == {other}


def test_search_by_id_and_records(client, cifar_small):
    first = client.get("/search/0", params={"k": 5}).json()["results"]
    assert len(first) == 5 and 0 not in [x["id"] for x in first]
    e = client.get("/entries/0").json()
    assert set(e) == {"id", "key", "label"} and e["id"] == 0 and e["label"] == e["key"].split("/")[1]
    img = client.get("/images/0")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert img.content == (cifar_small / e["key"]).read_bytes()
    th = client.get("/thumbs/0")
    assert th.status_code == 200 and Image.open(io.BytesIO(th.content)).size[0] <= 128
    assert client.get("/thumbs/0").content == th.content  # served from the cache


@pytest.mark.parametrize("route", ["/images/{}", "/thumbs/{}", "/search/{}", "/entries/{}"])
def test_unknown_id_is_404(client, route):
    r = client.get(route.format(999999))
    assert r.status_code == 404 and r.json()["detail"] == "no image with id 999999 in this collection"


@pytest.mark.parametrize(
    "method,route",
    [
        ("GET", "/images/{}"),
        ("GET", "/thumbs/{}"),
        ("GET", "/search/{}"),
        ("GET", "/entries/{}"),
        ("DELETE", "/images/{}"),
    ],
)
@pytest.mark.parametrize("bad", [str(2**63), str(2**63 - 1), "-1", str(-(2**63) - 1), "9" * 400, "1.5", "x", "1e3"])
def test_ids_outside_int64_are_422_never_500(client, method, route, bad):
    """Any id text: a 422 naming the range, or (2**63-1, in range) a 404; never a 500."""
    r = client.request(method, route.format(bad), headers=KEY)
    if bad == str(2**63 - 1):
        assert r.status_code == 404, r.text
    else:
        assert r.status_code == 422, (bad, r.status_code, r.text)


@pytest.mark.parametrize("params", [{"k": 2**63}, {"k": -1}, {"radius": 2**64}, {"rerank": 10**30}, {"radius": -1}])
def test_query_ints_outside_their_range_are_422(client, params):
    assert client.get("/search/0", params=params).status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/../../etc/passwd",
        "/thumbs/%2Fetc%2Fpasswd",
        "/images/0%2F..%2F..%2Fmanifest.json",
        "/static/..%2F..%2Fcollection.py",
        "/static/../state.py",
        "/thumbs/1e3",
        "/images/0x1",
    ],
)
def test_path_traversal_never_reads_a_file(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


def test_bad_uploads_are_4xx_with_a_message(client, cifar_small):
    jpg = _test_images(cifar_small, 1)[0].read_bytes()
    cases = {
        "empty": (b"", "image/jpeg", 415, "empty"),
        "text": (b"hello, this is not an image at all", "image/jpeg", 415, "not an image"),
        "html": (b"<html><body>x</body></html>", "text/html", 415, "content type"),
        "truncated": (jpg[: len(jpg) // 3], "image/jpeg", 422, ""),
        "corrupt": (jpg[:200] + bytes(range(256)) * 4, "image/jpeg", 422, ""),
        "bomb": (_png(100_000, 100_000), "image/png", 413, "pixel"),
    }
    for name, (data, ctype, status, words) in cases.items():
        r = client.post("/search", files={"image": (name, data, ctype)})
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words.lower() in r.json()["detail"].lower(), (name, r.text)
    r = client.post("/search", files={"image": ("big.jpg", jpg + b"\0" * (21 * 1024 * 1024), "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.post("/search").status_code == 422  # no file
    for params in ({"k": 0}, {"k": 5000}, {"radius": 99}, {"rerank": 0}, {"k": "x"}):
        r = client.post("/search", files={"image": ("q.jpg", jpg, "image/jpeg")}, params=params)
        assert r.status_code == 422, (params, r.text)


def test_mutations_need_the_key(client, cifar_small):
    jpg = _test_images(cifar_small, 1)[0].read_bytes()
    files = {"images": ("a.jpg", jpg, "image/jpeg")}
    assert client.post("/images", files=files).status_code == 401
    assert client.post("/images", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.delete("/images/3").status_code == 401
    assert client.get("/stats").json()["count"] == 120


def test_mutations_disabled_without_a_key(served_collection, tmp_path, cifar_small, server_class):
    from hashsearch.service import create_app

    with server_class(create_app(served_collection, cache_dir=tmp_path)) as s, httpx.Client(base_url=s.url) as c:
        jpg = _test_images(cifar_small, 1)[0].read_bytes()
        r = c.post("/images", files={"images": ("a.jpg", jpg, "image/jpeg")}, headers=KEY)
        assert r.status_code == 403 and "--api-key" in r.json()["detail"]
        assert c.delete("/images/0", headers=KEY).status_code == 403
        assert c.get("/health").status_code == 200 and c.get("/search/0").status_code == 200


def test_add_remove_saved_atomically(client, server, cifar_small):
    path = server.app.state.hs.path
    imgs = fresh_jpegs(cifar_small, 2, salt=1)
    files = [("images", (name, data, "image/jpeg")) for name, data in imgs]
    files.append(("images", ("bad.jpg", b"not an image", "image/jpeg")))
    r = client.post("/images", files=files, data={"labels": "airplane,airplane,x"}, headers=KEY)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["ids"]) == 2 and out["count"] == 122 and out["errors"][0]["file"] == "bad.jpg"
    reopened = Collection.open(path)
    assert len(reopened) == 122 and reopened.entries(out["ids"])[0]["label"] == "airplane"
    reopened.close()  # an open collection holds its generation: a save leaves it on disk until let go
    new = out["ids"][0]
    assert client.get(f"/thumbs/{new}").status_code == 200
    hit = client.post("/search", files={"image": ("q.jpg", imgs[0][1], "image/jpeg")}, params={"k": 3}).json()[
        "results"
    ]
    assert new in [x["id"] for x in hit]
    assert client.delete(f"/images/{new}", headers=KEY).json()["count"] == 121
    assert client.get(f"/images/{new}").status_code == 404
    assert client.delete(f"/images/{new}", headers=KEY).status_code == 404
    assert len(Collection.open(path)) == 121
    assert len(list(Path(path).glob("gen-*"))) == 1


def test_background_job(client, cifar_small):
    import time

    files = [("images", (name, data, "image/jpeg")) for name, data in fresh_jpegs(cifar_small, 4, salt=2)]
    before = client.get("/stats").json()["count"]
    job = client.post("/images", files=files, data={"background": "true", "labels": "bg"}, headers=KEY).json()
    assert job["state"] in ("running", "done") and job["total"] == 4
    deadline = time.time() + 60
    while (j := client.get(f"/jobs/{job['id']}").json())["state"] == "running":
        assert time.time() < deadline
        time.sleep(0.1)
    assert j["state"] == "done" and j["done"] == 4 and len(j["ids"]) == 4
    assert client.get("/stats").json()["count"] == before + 4
    assert client.get("/jobs/nope").status_code == 404


def test_searches_during_adds_see_old_or_new_state(client, cifar_small):
    imgs = fresh_jpegs(cifar_small, 6, salt=3)
    errors, counts = [], []
    stop = threading.Event()

    def searcher():
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            while not stop.is_set():
                r = c.get("/search/1", params={"k": 200})
                if r.status_code != 200:
                    errors.append(r.text)
                counts.append(len(r.json()["results"]))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    before = client.get("/stats").json()["count"]
    for name, data in imgs:
        r = client.post("/images", files={"images": (name, data, "image/jpeg")}, headers=KEY)
        assert r.status_code == 200, r.text
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert set(counts) <= set(range(before - 1, before + len(imgs)))  # k=200 > n: every result is a whole state
    assert client.get("/stats").json()["count"] == before + len(imgs)


def test_evaluation_json(client):
    body = client.get("/evaluation").json()
    rows = body["rows"]
    assert rows and "map" in rows[0]["metrics"] and "pr_curve" in rows[0]["metrics"]
