"""Names that are not UTF-8 (a Latin-1 share's files and folders) through the HTTP API: every
route answers 200 with valid JSON that gives the bytes back, never a 500."""

from __future__ import annotations

import os
import shutil
import warnings

import httpx
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import FolderSource
from hashsearch.hashing import create_hasher
from hashsearch.pipeline.build import build_collection
from tests.service.conftest import API_KEY, Server

CREME = os.fsdecode(b"cr\xe8me")
CAFE = os.fsdecode(b"caf\xe9.jpg")


@pytest.fixture(scope="module")
def latin1(cifar_small, tmp_path_factory):
    """A class folder and a file named in Latin-1, beside an ordinary class, served."""
    from hashsearch.service import create_app

    tmp = tmp_path_factory.mktemp("names")
    root = tmp / "photos"
    test = cifar_small / "test"
    for cls, src in ((CREME, "cat"), ("dog", "dog")):
        (root / cls).mkdir(parents=True)
        for i, p in enumerate(sorted((test / src).glob("*.jpg"))[:4]):
            shutil.copy(p, root / cls / (CAFE if (cls == CREME and i == 0) else p.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            FolderSource(root),
            create_backbone("efficientnet-lite0", input_size=64),
            create_hasher("itq", n_bits=8),
            cache_dir=tmp / "cache",
            progress=False,
        )
    coll.save(tmp / "n.hsx")
    with Server(create_app(tmp / "n.hsx", api_key=API_KEY, cache_dir=tmp / "svc")) as server:
        yield server, root


def test_every_route_answers_names_that_are_not_utf8(latin1):
    server, root = latin1
    stats = httpx.get(server.url + "/stats")
    assert stats.status_code == 200 and stats.content.isascii()
    assert os.fsencode(CREME) in {os.fsencode(k) for k in stats.json()["labels"]}
    entries = [httpx.get(f"{server.url}/entries/{i}").json() for i in range(8)]
    listed = httpx.get(f"{server.url}/entries", params={"limit": 8})
    assert listed.status_code == 200 and listed.content.isascii() and listed.json()["entries"] == entries
    cafe = next(e for e in entries if e["key"].endswith(".jpg") and os.fsencode(e["key"]) == b"cr\xe8me/caf\xe9.jpg")
    assert os.fsencode(cafe["label"]) == b"cr\xe8me"
    for url in (
        f"/search/{cafe['id']}?k=7",
        f"/search/{cafe['id']}?k=7&rerank=5",
        f"/thumbs/{cafe['id']}",
        f"/images/{cafe['id']}",
    ):
        assert httpx.get(server.url + url).status_code == 200, url
    hits = httpx.get(f"{server.url}/search/{(cafe['id'] + 1) % 8}?k=7").json()["results"]
    assert any(os.fsencode(h["key"]) == b"cr\xe8me/caf\xe9.jpg" for h in hits)
    data = (root / CREME / CAFE).read_bytes()
    found = httpx.post(server.url + "/search?k=1", files={"image": ("caf\xe9.jpg", data, "image/jpeg")}).json()
    assert found["results"][0]["id"] == cafe["id"] and found["results"][0]["distance"] == 0
