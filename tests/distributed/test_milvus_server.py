"""The milvus back end against a real Milvus standalone server, not Milvus Lite.

The server (tests/distributed/conftest.py: the PyPI package `milvus`, Milvus 2.3) runs with
authorization on, so every call here also shows that the token reaches it. Checked:

- the index contract: every test of tests/index/test_contract.py that takes a back end name,
  run with "milvus" on the server (the same functions, not copies);
- BIN_IVF_FLAT, which only a server has;
- a saved index reopens with the token from HASHSEARCH_MILVUS_TOKEN; without it, or with a wrong
  one, one clear error;
- the CLI: `hashsearch index --backend milvus --uri http://127.0.0.1:PORT`, `hashsearch search`
  (and its one-line error without a token), and `hashsearch serve` answering a real HTTP request.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from hashsearch.codes import pack_bits
from hashsearch.index import FlatIndex, create_index
from hashsearch.index.milvus_backend import TOKEN_ENV, MilvusIndex

pytestmark = [pytest.mark.distributed, pytest.mark.milvus]

HASHSEARCH = Path(sys.executable).with_name("hashsearch")


@pytest.fixture(autouse=True)
def token_env(milvus_server, monkeypatch):
    """Every test here reaches the server with its token from the environment, as a user would."""
    monkeypatch.setenv(TOKEN_ENV, milvus_server.token)


# -- the index contract ------------------------------------------------------------------------
def _load_contract():
    """tests/index/test_contract.py as a module of its own (its `make_index` is replaced per test)."""
    path = Path(__file__).resolve().parents[1] / "index" / "test_contract.py"
    spec = importlib.util.spec_from_file_location("hashsearch_contract_on_milvus_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


contract = _load_contract()


def _contract_cases():
    """(test name, arguments) for each contract test taking `name`, over its other parametrizations."""
    for fname, fn in sorted(vars(contract).items()):
        if not fname.startswith("test_") or "name" not in inspect.signature(fn).parameters:
            continue
        grids = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize" and mark.args[0] != "name":
                grids.append([(mark.args[0], v) for v in mark.args[1]])
        for combo in itertools.product(*grids):
            kwargs = dict(combo)
            label = ",".join(f"{k}={v}" for k, v in kwargs.items())
            yield pytest.param(fname, kwargs, id=f"{fname}[{label}]" if label else fname)


@pytest.mark.parametrize(("test", "kwargs"), list(_contract_cases()))
def test_contract_on_server(test, kwargs, milvus_server, monkeypatch, tmp_path):
    """The contract's own test function, its indexes made on the server (collections recycled from
    a small pool per code width, as the contract does on Milvus Lite)."""
    pool = itertools.count()

    def make_index(name, n_bits):
        assert name == "milvus"
        return create_index(
            "milvus",
            n_bits=n_bits,
            uri=milvus_server.uri,
            collection=f"contract_{(n_bits + 7) // 8}_{next(pool) % 3}",
            if_exists="clear",
        )

    monkeypatch.setattr(contract, "make_index", make_index)
    fn = getattr(contract, test)
    if "tmp_path" in inspect.signature(fn).parameters:
        kwargs = {**kwargs, "tmp_path": tmp_path}
    fn(name="milvus", **kwargs)


def test_contract_cases_cover_the_contract():
    """A contract test added later is picked up here too: every one taking `name` is listed."""
    names = {p.values[0] for p in _contract_cases()}
    expected = {
        n for n, f in vars(contract).items() if n.startswith("test_") and "name" in inspect.signature(f).parameters
    }
    assert names == expected and len(names) >= 15


# -- what only a server has ----------------------------------------------------------------------
def test_bin_ivf_flat_probing_every_list_matches_flat(milvus_server):
    """BIN_IVF_FLAT (approximate in general; a server's index type, not Lite's) with nprobe = nlist
    scans every list, so its answers equal the exact ones, ties ordered by id."""
    g = np.random.default_rng(7)
    db, queries = pack_bits(g.integers(0, 2, (800, 32))), pack_bits(g.integers(0, 2, (6, 32)))
    ivf = create_index("milvus", n_bits=32, uri=milvus_server.uri, index_type="BIN_IVF_FLAT", nlist=4, nprobe=4)
    flat = FlatIndex(32)
    try:
        assert not ivf.exact
        ids = g.permutation(5000)[:800].astype(np.int64)
        ivf.add(db, ids)
        flat.add(db, ids)
        got, want = ivf.search(queries, 25), flat.search(queries, 25)
        np.testing.assert_array_equal(got.distances, want.distances)
        np.testing.assert_array_equal(got.ids, want.ids)
    finally:
        ivf._client.drop_collection(ivf.collection)
        ivf.close()


def test_reopens_with_the_token_from_the_environment(milvus_server, tmp_path, monkeypatch):
    g = np.random.default_rng(8)
    db, queries = pack_bits(g.integers(0, 2, (300, 64))), pack_bits(g.integers(0, 2, (3, 64)))
    index = create_index("milvus", n_bits=64, uri=milvus_server.uri)  # token: from the environment
    index.add(db)
    before = index.search(queries, 10)
    index.save(tmp_path)
    index.close()
    saved = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json"))
    assert milvus_server.uri in saved and milvus_server.token not in saved, "the token is never written"

    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConnectionError, match=f"needs credentials and got no token .*set {TOKEN_ENV}="):
        MilvusIndex.load(tmp_path)
    monkeypatch.setenv(TOKEN_ENV, "root:not-the-password")
    with pytest.raises(ConnectionError, match="got a token that it refused"):
        MilvusIndex.load(tmp_path)

    monkeypatch.setenv(TOKEN_ENV, milvus_server.token)
    loaded = MilvusIndex.load(tmp_path)
    assert loaded.uri == milvus_server.uri and len(loaded) == 300
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.distances, before.distances)
    loaded._client.drop_collection(loaded.collection)
    loaded.close()


# -- the command line and the HTTP service ---------------------------------------------------------
def hashsearch(*args, env=None, check=True, timeout=300):
    """Run the installed `hashsearch` command in a process of its own."""
    proc = subprocess.run(
        [str(HASHSEARCH), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def server_collection(milvus_server, cifar_small, tmp_path_factory):
    """`hashsearch index` of 40 CIFAR-10 test images into a collection on the server."""
    tmp = tmp_path_factory.mktemp("milvus-cli")
    out = tmp / "photos.hsx"
    proc = hashsearch(
        "index", cifar_small / "test", "--out", out, "--backend", "milvus", "--uri", milvus_server.uri,
        "-m", "itq", "--bits", 16, "--input-size", 64, "--cache-dir", tmp / "cache",
        env={TOKEN_ENV: milvus_server.token},
    )  # fmt: skip
    assert "indexed 40 images" in proc.stdout
    return out, tmp / "cache"


def _query(cifar_small) -> Path:
    return sorted((cifar_small / "test" / "ship").glob("*.jpg"))[0]


def test_cli_index_puts_the_codes_on_the_server(server_collection, milvus_server):
    out, _ = server_collection
    metas = [json.loads(p.read_text()) for p in out.rglob("index.json") if p.parent.name != "store"]  # not the mirror
    assert metas and all(m["backend"] == "milvus" and m["uri"] == milvus_server.uri for m in metas)
    assert not list(out.rglob("milvus.db")), "nothing on Milvus Lite"
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token)
    try:
        rows = client.query(metas[-1]["collection"], filter="", output_fields=["count(*)"])
        assert int(rows[0]["count(*)"]) == 40
    finally:
        client.close()
    assert not any(milvus_server.token in p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_cli_search_with_and_without_the_token(server_collection, cifar_small, milvus_server):
    out, cache = server_collection
    query = _query(cifar_small)
    proc = hashsearch("search", out, query, "-k", 5, "--json", "--cache-dir", cache)
    hits = json.loads(proc.stdout)[0]["results"]
    assert len(hits) == 5 and hits[0]["distance"] == 0 and hits[0]["key"] == f"ship/{query.name}"
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)

    proc = hashsearch("search", out, query, "--cache-dir", cache, env={TOKEN_ENV: ""}, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr  # no pymilvus log lines, no traceback
    assert proc.stderr.startswith(f"error: the Milvus server at {milvus_server.uri} needs credentials and got no token")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_answers_a_real_http_search(server_collection, cifar_small, milvus_server):
    out, cache = server_collection
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(HASHSEARCH), "serve", str(out), "--port", str(port), "--cache-dir", str(cache / "thumbs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, TOKEN_ENV: milvus_server.token},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"{base}/stats", timeout=5) as r:
                    stats = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer within 180 s"
                time.sleep(0.5)
        assert stats["count"] == 40
        query = _query(cifar_small)
        boundary = "hashsearch-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{query.name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + query.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            f"{base}/search?k=5",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            hits = json.loads(r.read())["results"]
        assert len(hits) == 5 and hits[0]["distance"] == 0 and hits[0]["key"] == f"ship/{query.name}"
        with urllib.request.urlopen(f"{base}/search/{hits[0]['id']}?k=3", timeout=60) as r:
            more = json.loads(r.read())["results"]
        assert len(more) == 3 and hits[0]["id"] not in [h["id"] for h in more]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_add_and_remove_keep_the_server_in_step(server_collection, cifar_small, milvus_server):
    """`add` and `remove` reopen the collection (token from the environment) and change the server's
    collection with it: the server's count follows, and an added image is found. (Runs last: it changes
    the collection the tests above read.)"""
    out, cache = server_collection
    hashsearch("add", out, cifar_small / "train" / "frog", "--cache-dir", cache)
    frog = sorted((cifar_small / "train" / "frog").glob("*.jpg"))[0]
    hits = json.loads(hashsearch("search", out, frog, "-k", 1, "--json", "--cache-dir", cache).stdout)[0]["results"]
    assert hits[0]["distance"] == 0 and hits[0]["path"] == str(frog)
    hashsearch("remove", out, 0, 1)
    info = json.loads(hashsearch("info", out).stdout)
    assert info["count"] == 46
    from pymilvus import MilvusClient

    meta = json.loads(max(out.glob("gen-*/index/index.json")).read_text())
    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token)
    try:
        rows = client.query(meta["collection"], filter="", output_fields=["count(*)"], consistency_level="Strong")
        assert int(rows[0]["count(*)"]) == 46
        assert client.get(meta["collection"], ids=[0, 1]) == []
    finally:
        client.close()
