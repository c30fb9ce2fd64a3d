"""GET /entries: the collection's records a page at a time (what the page's browser reads), against
the real server on loopback over a private copy of the 120 CIFAR-10 JPEGs (conftest `server`)."""

from __future__ import annotations

import pytest

from hashsearch.collection import Collection

from .conftest import API_KEY, fresh_jpegs

KEY = {"X-API-Key": API_KEY}


def _all_ids(client, limit):
    ids, offset = [], 0
    while True:
        page = client.get("/entries", params={"offset": offset, "limit": limit}).json()
        assert page["offset"] == offset and page["limit"] == limit and len(page["entries"]) <= limit
        if not page["entries"]:
            return ids, page["total"]
        ids += [e["id"] for e in page["entries"]]
        offset += limit


def test_pages_give_every_record_once_in_id_order(client, served_collection):
    coll = Collection.open(served_collection)
    want = sorted(coll.index.ids.tolist())
    for limit in (1, 7, 50, 1000):
        ids, total = _all_ids(client, limit)
        assert ids == want and total == len(want) == client.get("/stats").json()["count"] == 120
    page = client.get("/entries", params={"offset": 10, "limit": 5}).json()
    assert page["entries"] == [client.get(f"/entries/{i}").json() for i in want[10:15]]
    assert all(set(e) == {"id", "key", "label"} and not e["key"].startswith("/") for e in page["entries"])
    default = client.get("/entries").json()
    assert (default["offset"], default["limit"], len(default["entries"])) == (0, 100, 100)
    past = client.get("/entries", params={"offset": 10**9}).json()
    assert past["entries"] == [] and past["total"] == 120


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1.5"}, "offset"),
    ],
)
def test_out_of_range_parameters_are_a_422_naming_the_parameter(client, params, name):
    r = client.get("/entries", params=params)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == ["query", name] and problem["msg"]
    assert "Traceback" not in r.text and "\n" not in r.text


def test_adds_and_removes_show_in_the_next_page(client, cifar_small):
    before, total = _all_ids(client, 1000)
    (name, data), *_ = fresh_jpegs(cifar_small, 1, salt=901)
    added = client.post("/images", files={"images": (name, data, "image/jpeg")}, headers=KEY).json()["ids"]
    assert len(added) == 1
    page = client.get("/entries", params={"offset": total, "limit": 10}).json()
    assert [e["id"] for e in page["entries"]] == added and page["total"] == total + 1
    assert page["entries"] == [client.get(f"/entries/{added[0]}").json()]
    gone = before[3]
    assert client.delete(f"/images/{gone}", headers=KEY).status_code == 200
    page = client.get("/entries", params={"offset": 0, "limit": 5}).json()
    assert [e["id"] for e in page["entries"]] == before[:3] + before[4:6] and page["total"] == total
    assert _all_ids(client, 1000)[0] == [i for i in before if i != gone] + added


def test_the_route_is_in_the_schema_with_its_limits(client):
    op = client.get("/openapi.json").json()["paths"]["/entries"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == 1000 and params["limit"]["default"] == 100
    assert params["offset"]["minimum"] == 0 and params["offset"]["default"] == 0
    assert "total" in op["description"]
