"""The CLI end to end on real CIFAR-10 images: index, info, search, add, remove, eval, list."""

import json

import pytest
from typer.testing import CliRunner

from hashsearch.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def built(cifar_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "test.hsx"
    text = run(
        "index",
        cifar_small / "test",
        "--out",
        out,
        "--method",
        "itq",
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        tmp / "cache",
    )
    assert "indexed 40 images" in text
    return out, tmp


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """8 real photos (flowers12: 224 px JPEGs, 4 daisy, 4 iris): at --input-size 64 they decode at
    reduced scale (Pillow's draft mode), as a user's photos do."""
    import tarfile
    from pathlib import Path

    from tests.conftest import cifar_archive

    root = tmp_path_factory.mktemp("flowers")
    taken: dict[str, int] = {}
    with tarfile.open(cifar_archive().with_name("flowers12-960.tar.gz"), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if (
                m.isfile()
                and m.name.endswith(".jpg")
                and parts[-2] in ("daisy", "iris")
                and taken.get(parts[-2], 0) < 4
            ):
                (root / parts[-2]).mkdir(exist_ok=True)
                (root / parts[-2] / parts[-1]).write_bytes(tar.extractfile(m).read())
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
            if sum(taken.values()) == 8:
                break
    return root


def test_search_decodes_a_query_as_index_and_the_api_do(flowers, tmp_path, monkeypatch):
    """Session 6, finding 2: `search` decoded its queries at full size where the indexer and the API
    decode a JPEG at reduced scale, so a photo's query features were ~2 (L2) from its indexed ones."""
    import numpy as np

    from hashsearch.cli.commands import query_features
    from hashsearch.collection import Collection
    from hashsearch.data.decode import DEFAULT_MAX_PIXELS, decode_image
    from hashsearch.pipeline import extract_queries
    from hashsearch.service.state import ServiceState

    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))  # one ONNX export for the CLI and the API
    out = tmp_path / "f.hsx"
    run("index", flowers, "--out", out, "--method", "lsh", "--bits", "16", "--input-size", "64")
    query = sorted(flowers.rglob("*.jpg"))[5]
    hits = json.loads(run("search", out, query, "-k", "2", "--rerank", "8", "--json"))[0]["results"]
    # Itself first, at the float16 rounding of its stored features (about 0.01), not ~2.
    assert hits[0]["path"] == str(query) and hits[0]["distance"] < 0.05 < hits[1]["distance"]

    coll = Collection.open(out)
    cli_feats, answered, errors = query_features(coll, [query], DEFAULT_MAX_PIXELS, None)
    assert answered == [0] and not errors
    hs = ServiceState(out, cache_dir=tmp_path / "thumbs")
    api_feats = hs.features([hs.decode(query.read_bytes(), query.name, query=True)])
    np.testing.assert_array_equal(cli_feats, api_feats)
    stored = coll.features_of(np.array([hits[0]["id"]])).astype(np.float32)
    assert np.abs(stored - cli_feats).max() < 0.01
    full_size = extract_queries(coll.backbone, [decode_image(query.read_bytes())], coll.extractor())
    assert np.abs(stored - full_size).max() > 0.1  # what the CLI computed before: the test can tell


def test_info(built):
    out, _ = built
    info = json.loads(run("info", out))
    assert info["count"] == 40 and info["n_bits"] == 16 and info["method"] == "itq"
    assert info["labels"]["cat"] == 4 and info["input_size"] == 64


def test_search_finds_the_query_itself_first(built, cifar_small):
    out, tmp = built
    query = sorted((cifar_small / "test" / "ship").glob("*.jpg"))[0]
    hits = json.loads(run("search", out, query, "-k", "5", "--json", "--cache-dir", tmp / "cache"))[0]["results"]
    assert len(hits) == 5 and hits[0]["distance"] == 0
    assert any(h["path"] == str(query) and h["key"] == f"ship/{query.name}" for h in hits if h["distance"] == 0)
    reranked = json.loads(
        run("search", out, query, "-k", "5", "--rerank", "20", "--json", "--cache-dir", tmp / "cache")
    )[0]["results"]
    # Stored features are float16, so the query's distance to itself is small but not 0.
    assert reranked[0]["path"] == str(query) and reranked[0]["distance"] < reranked[1]["distance"] / 10
    assert "rank" in run("search", out, query, "-k", "3", "--cache-dir", tmp / "cache")


def test_add_then_remove(built, cifar_small):
    out, tmp = built
    run("add", out, cifar_small / "train" / "frog", "--cache-dir", tmp / "cache")
    assert json.loads(run("info", out))["count"] == 48
    run("remove", out, 40, 41)
    assert json.loads(run("info", out))["count"] == 46


def test_eval_on_a_users_labelled_folder(cifar_small, tmp_path):
    stem = tmp_path / "res"
    text = run(
        "eval",
        "--data",
        cifar_small,
        "--queries-per-class",
        2,
        "--train-per-class",
        4,
        "--method",
        "lsh,itq",
        "--bits",
        "8,16",
        "--input-size",
        "64",
        "--out",
        stem,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert "itq" in text
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert {(r["method"], r["bits"]) for r in rows} == {("lsh", 8), ("lsh", 16), ("itq", 8), ("itq", 16)}
    assert "| itq" in stem.with_suffix(".md").read_text()


def test_list_names_the_plugins():
    text = run("list")
    for name in ("itq", "dlbhc", "efficientnet-lite0", "flat", "cifar10-1k"):
        assert name in text


def test_user_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code != 0
    result = runner.invoke(app, ["eval", "--method", "itq"])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_serve_on_a_taken_port_is_one_clean_line(tmp_path):
    """The port is checked before anything else: a taken port, a bad one, or an address that is not
    this machine's is one 'error:' line at once (it was a uvicorn traceback, or a 'serving' line first)."""
    import socket

    from typer.testing import CliRunner

    from hashsearch.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--port", str(port)])
    assert result.exit_code == 2 and result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert result.output.count("\n") == 1 and "serving" not in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--port", "99999"])
    assert result.exit_code == 2 and result.output.startswith(
        "error: Invalid value for '--port': Input should be less than or equal to 65535"
    )
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--host", "192.0.2.1"])
    assert result.exit_code == 2 and "error: cannot listen on 192.0.2.1:8000" in result.output
