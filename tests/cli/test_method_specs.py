"""Method specs with parameters (`dpsh[epochs=5]`, as `eval` and `bench` read them) in `hashsearch
index -m` and `hashsearch duplicates -m`, on the 120 real CIFAR-10 JPEGs of `cifar_small`: the
parameters reach the hasher the collection saves, and a bad spec is eval's one error line, given
before any image is read."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hashsearch.cli import app
from hashsearch.collection import Collection


def run(*args, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("spec-cache")


@pytest.mark.parametrize(
    ("spec", "method", "params"),
    [("itq[n_iter=3]", "itq", {"n_iter": 3}), ("bihalf[epochs=2,lr=0.01]", "bihalf", {"epochs": 2, "lr": 0.01})],
)
def test_index_takes_a_spec_and_the_collection_keeps_its_parameters(cifar_small, cache, tmp_path, spec, method, params):
    out = tmp_path / "c.hsx"
    text = run("index", cifar_small / "train", "--out", out, "-m", spec, "--bits", 16, "--cache-dir", cache)
    assert f"{spec} 16 bits" in text
    hasher = Collection.open(out).hasher
    assert hasher.name == method and hasher.n_bits == 16
    assert {k: hasher.get_params()[k] for k in params} == params
    manifest = json.loads(next(out.glob("gen-*/manifest.json")).read_text())
    assert manifest["hasher"]["method"] == method and manifest["hasher"]["params"]["n_bits"] == 16
    assert {k: manifest["hasher"]["params"][k] for k in params} == params


def _error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("spec", ["itq[n_iter=3", "nope", "itq[7]"])
def test_a_bad_spec_is_evals_error_line(cifar_small, tmp_path, spec):
    empty = tmp_path / "cache"
    line = _error_line(run("index", cifar_small, "--out", tmp_path / "c.hsx", "-m", spec, "--cache-dir", empty, code=2))
    assert line == _error_line(run("eval", "--data", cifar_small, "-m", spec, "--cache-dir", empty, code=2))
    assert line == _error_line(run("duplicates", cifar_small, "-m", spec, "--cache-dir", empty, code=2))
    assert not (tmp_path / "c.hsx").exists() and not empty.exists()  # refused before any image was read


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("itq[depth=3]", "method spec 'itq[depth=3]': itq has no parameter depth; it takes n_iter"),
        ("lsh[x=1]", "lsh has no parameter x; it takes none besides --bits and --seed"),
        ("itq[n_bits=8]", "give the code length with --bits and the seed with --seed"),
    ],
)
def test_a_parameter_the_method_does_not_take_is_named(cifar_small, tmp_path, spec, words):
    for cmd in ("index", "duplicates"):
        args = [cmd, cifar_small, "-m", spec, "--cache-dir", tmp_path / "cache"]
        line = _error_line(run(*args, *(["--out", tmp_path / "c.hsx"] if cmd == "index" else []), code=2))
        assert words in line
    assert not (tmp_path / "cache").exists()


def test_duplicates_takes_a_spec(cifar_small, cache):
    out = json.loads(
        CliRunner()
        .invoke(app, ["duplicates", str(cifar_small), "-m", "itq[n_iter=5]", "--json", "--cache-dir", str(cache)])
        .stdout
    )
    assert out["n_images"] == 120 and out["n_bits"] == 64
