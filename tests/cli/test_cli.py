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
