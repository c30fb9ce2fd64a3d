"""GET /duplicates against the real server on loopback, over a collection of real photos with planted copies."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import httpx
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import open_source
from hashsearch.duplicates import default_min_similarity
from hashsearch.hashing import create_hasher
from hashsearch.pipeline import build_collection
from hashsearch.service import create_app

from .conftest import API_KEY, Server

_spec = importlib.util.spec_from_file_location(
    "planted_duplicates", Path(__file__).parents[1] / "planted_duplicates.py"
)
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("svcdups")
    groups = planted.make_planted(root / "photos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            open_source(str(root / "photos"), "none"),
            create_backbone("efficientnet-lite0", input_size=128),
            create_hasher("itq", n_bits=64, seed=0),
            index="mih",
            keep_duplicates=True,
            progress=False,
            cache_dir=root / "cache",
        )
    coll.save(root / "p.hsx")
    before = {p: p.read_bytes() for p in (root / "photos").rglob("*.jpg")}
    with Server(create_app(root / "p.hsx", api_key=API_KEY, cache_dir=root / "thumbs")) as s:
        with httpx.Client(base_url=s.url, timeout=60) as client:
            yield client, groups, root
    assert {p: p.read_bytes() for p in (root / "photos").rglob("*.jpg")} == before  # the route never touches a file


def test_the_planted_groups_with_keys_not_server_paths(served):
    client, groups, root = served
    r = client.get("/duplicates")
    assert r.status_code == 200, r.text
    out = r.json()
    found = sorted(sorted(m["key"] for m in g["members"]) for g in out["groups"])
    assert found == sorted(map(sorted, groups))
    n_images = sum(1 for _ in (root / "photos").rglob("*.jpg"))
    assert out["n_groups"] == len(groups) and out["n_images"] == n_images
    assert out["n_duplicates"] == sum(len(g) - 1 for g in groups)
    # The default of a collection this small (0.5), not the 0.4 of large ones.
    assert out["min_similarity"] == default_min_similarity(n_images) == 0.5
    assert out["radius"] == 16 and out["n_bits"] == 64
    assert str(root).encode() not in r.content and r.content.isascii()
    for g in out["groups"]:
        first = g["members"][0]
        assert first["keep"] and first["id"] == g["keep"] and first["distance"] == 0 and g["size"] == len(g["members"])
        assert set(first) == {
            "id",
            "key",
            "label",
            "keep",
            "exact",
            "distance",
            "similarity",
            "bytes",
            "width",
            "height",
        }
        assert client.get(f"/thumbs/{g['members'][1]['id']}").status_code == 200  # ids the page can show


def test_paging_and_parameters(served):
    client, groups, _ = served
    full = client.get("/duplicates").json()["groups"]
    page = client.get("/duplicates", params={"limit": 2, "offset": 3}).json()
    assert [g["members"] for g in page["groups"]] == [g["members"] for g in full[3:5]]
    assert [g["group"] for g in page["groups"]] == [3, 4]
    sizes = [g["size"] for g in full]
    assert sizes == sorted(sizes, reverse=True)
    loose = client.get("/duplicates", params={"radius": 24, "codes_only": "true"}).json()
    assert loose["min_similarity"] is None and loose["n_duplicates"] > sum(g["size"] - 1 for g in full)
    shortest = client.get("/duplicates", params={"keep": "shortest-path"}).json()
    for g in shortest["groups"]:
        keys = [m["key"] for m in g["members"]]
        assert len(keys[0]) == min(map(len, keys))  # one root: the shortest key is the shortest path
    bluebell = next(g for g in shortest["groups"] if any(m["key"] == "backup/same-bytes.jpg" for m in g["members"]))
    same = [m for m in bluebell["members"] if m["key"] in ("backup/same-bytes.jpg", "originals/bluebell-0.jpg")]
    assert len(same) == 2 and same[0]["distance"] == same[1]["distance"]


def test_groups_that_pass_only_narrowly_are_marked(served):
    """The CLI warns of groups that pass narrowly before --move-to/--delete; the page deletes too, so the API
    marks them: a member not kept below narrow_below (min_similarity + 0.1)."""
    client, _, _ = served
    full = client.get("/duplicates").json()
    lowest = min(m["similarity"] for g in full["groups"] for m in g["members"] if not m["keep"])
    asked = round(lowest - 0.05, 4)  # so that the group holding the lowest member passes narrowly
    out = client.get("/duplicates", params={"min_similarity": asked}).json()
    assert out["narrow_below"] == round(asked + 0.1, 4)
    marked = [g["narrow"] for g in out["groups"]]
    assert marked == [any(m["similarity"] < out["narrow_below"] for m in g["members"][1:]) for g in out["groups"]]
    assert any(marked)
    assert client.get("/duplicates", params={"codes_only": "true"}).json()["narrow_below"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"radius": 65},
        {"radius": -1},
        {"radius": "x"},
        {"min_similarity": 1.5},
        {"keep": "biggest"},
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
    ],
)
def test_out_of_range_parameters_are_422(served, params):
    client, _, _ = served
    r = client.get("/duplicates", params=params)
    assert r.status_code == 422, r.text
    assert "Traceback" not in r.text


def test_a_collection_without_features_answers_codes_only(tmp_path, served):
    _, _, root = served
    shutil.copytree(root / "photos", tmp_path / "photos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            open_source(str(tmp_path / "photos"), "none"),
            create_backbone("efficientnet-lite0", input_size=128),
            create_hasher("itq", n_bits=64, seed=0),
            keep_duplicates=True,
            store_features=False,
            progress=False,
            cache_dir=root / "cache",
        )
    coll.save(tmp_path / "nf.hsx")
    with Server(create_app(tmp_path / "nf.hsx")) as s:
        out = httpx.get(f"{s.url}/duplicates", timeout=60).json()
        assert out["min_similarity"] is None and out["groups"]
        r = httpx.get(f"{s.url}/duplicates", params={"min_similarity": 0.5}, timeout=60)
        assert r.status_code == 422 and "stored features" in r.json()["detail"]


def _members(groups):
    """Each group's members as the route gives them (route JSON or library `Group`s)."""
    fields = ("id", "key", "keep", "exact", "distance", "similarity")
    return [
        [tuple(m[f] if isinstance(m, dict) else getattr(m, f) for f in fields) for m in g["members"]]
        if isinstance(g, dict)
        else [tuple(getattr(m, f) for f in fields) for m in g.members]
        for g in groups
    ]


def test_the_whitening_is_computed_once_per_state_of_the_collection(served, tmp_path, monkeypatch):
    """Requests reuse the whitened features until an add or a remove changes the collection; the
    groups are those a fresh library call finds on the collection as saved."""
    import io

    from PIL import Image

    import hashsearch.duplicates as dup
    from hashsearch.collection import Collection

    _, _, root = served
    shutil.copytree(root / "p.hsx", tmp_path / "p.hsx")
    calls = []
    real = dup.whiten
    monkeypatch.setattr(dup, "whiten", lambda *a, **k: calls.append(1) or real(*a, **k))  # counts, then whitens

    def fresh(**kw):  # the library on the saved collection, nothing kept between calls
        return _members(dup.find_duplicates(Collection.open(tmp_path / "p.hsx"), **kw).groups)

    with Server(create_app(tmp_path / "p.hsx", api_key=API_KEY, cache_dir=tmp_path / "thumbs")) as s:
        with httpx.Client(base_url=s.url, timeout=60) as client:
            first = client.get("/duplicates").json()
            assert len(calls) == 1
            assert client.get("/duplicates").json()["groups"] == first["groups"]
            loose = client.get("/duplicates", params={"radius": 24, "codes_only": "true"}).json()
            page = client.get("/duplicates", params={"limit": 2, "offset": 1, "keep": "oldest"}).json()
            assert len(calls) == 1  # four requests, one whitening
            n = len(calls)
            assert _members(first["groups"]) == fresh() and len(calls) == n + 1
            assert _members(loose["groups"]) == fresh(radius=24, min_similarity=None)
            assert _members(page["groups"]) == fresh(keep="oldest")[1:3]
            calls.clear()

            # An add makes a new state: whitened again once, and the new image is in the groups.
            im = Image.open(root / "photos" / "originals" / "daisy-3.jpg").convert("RGB")
            buf = io.BytesIO()
            im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
            added = client.post(
                "/images",
                files={"images": ("smaller.jpg", buf.getvalue(), "image/jpeg")},
                headers={"X-API-Key": API_KEY},
            ).json()["ids"]
            assert len(added) == 1
            after = client.get("/duplicates").json()
            assert client.get("/duplicates").json()["groups"] == after["groups"]
            assert len(calls) == 1 and after["n_images"] == first["n_images"] + 1
            daisy = next(g for g in after["groups"] if any(m["key"] == "originals/daisy-3.jpg" for m in g["members"]))
            assert added[0] in [m["id"] for m in daisy["members"]]
            assert _members(after["groups"]) == fresh()
            calls.clear()

            # A remove too: back to the first groups.
            assert client.delete(f"/images/{added[0]}", headers={"X-API-Key": API_KEY}).status_code == 200
            again = client.get("/duplicates").json()
            assert len(calls) == 1 and again["groups"] == first["groups"] and again["n_images"] == first["n_images"]
