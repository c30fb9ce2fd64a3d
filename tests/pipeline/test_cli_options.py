"""`hashsearch index` extraction options: --runtime, --int8, --engine/--address."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from hashsearch.cli import app

runner = CliRunner()


def test_index_with_int8_and_torch_runtime(cifar_small, tmp_path):
    cache = tmp_path / "cache"
    common = ["index", str(cifar_small / "test"), "-m", "itq", "--bits", "16", "--input-size", "64"]
    common += ["--cache-dir", str(cache)]
    r = runner.invoke(app, common + ["--out", str(tmp_path / "a.hsx"), "--int8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "40 features computed" in r.output
    # PyTorch shares fp32's cache key, not int8's: it computes all 40 again.
    r = runner.invoke(app, common + ["--out", str(tmp_path / "b.hsx"), "--runtime", "torch"], catch_exceptions=False)
    assert r.exit_code == 0 and "40 features computed" in r.output, r.output
    r = runner.invoke(app, common + ["--out", str(tmp_path / "c.hsx"), "--backend", "mih"], catch_exceptions=False)
    assert r.exit_code == 0 and "0 features computed, 40 from the cache" in r.output, r.output
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "c.hsx")]).output)
    assert info["count"] == 40 and info["index"] == "mih"
    # The index back end is --backend; --index (its old name, beside the `index` command) is gone.
    r = runner.invoke(app, common + ["--out", str(tmp_path / "d.hsx"), "--index", "mih"])
    assert r.exit_code != 0 and "--index" in r.output


def test_address_needs_the_ray_engine(cifar_small, tmp_path):
    r = runner.invoke(app, ["index", str(cifar_small / "test"), "--out", str(tmp_path / "x.hsx"), "--address", "auto"])
    assert r.exit_code != 0 and "--engine ray" in r.output


def _crops(coll, paths):
    """The uint8 crops the pipeline's workers make of `paths`."""
    from hashsearch.pipeline.steps import decode_batch

    jobs = [(str(p), str(p), p.read_bytes()) for p in paths]
    return decode_batch(jobs, coll.backbone.preprocess, 10**8, normalize=False)[1]


def _stored(coll):
    """{absolute path: stored (float16) feature} of every entry."""
    ids = np.arange(len(coll))
    return {e["path"]: f for e, f in zip(coll.entries(ids), coll.features_of(ids).astype(np.float32))}


def test_an_int8_collection_extracts_its_queries_and_additions_with_its_own_int8_model(cifar_small, tmp_path):
    from hashsearch.backbones.runtime import make_extractor
    from hashsearch.collection import Collection

    cache, out = tmp_path / "cache", tmp_path / "a.hsx"
    r = runner.invoke(
        app,
        [
            "index",
            str(cifar_small / "test"),
            "-m",
            "itq",
            "--bits",
            "16",
            "--input-size",
            "64",
            "--cache-dir",
            str(cache),
            "--out",
            str(out),
            "--int8",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert json.loads(runner.invoke(app, ["info", str(out)]).output)["encoding"] == "int8"
    shutil.rmtree(cache)  # the collection keeps its own copy of the int8 model
    coll = Collection.open(out)
    enc = coll.extractor(cache_dir=tmp_path / "cache2")
    assert enc.int8 and enc.cache_key == coll.int8_model.stem and "-int8-" in enc.cache_key
    stored = _stored(coll)
    paths = [Path(k) for k in stored]
    want = np.stack(list(stored.values()))
    got = enc.extract(_crops(coll, paths))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # the database's features, to float16
    fp32 = make_extractor(coll.backbone, "onnx", cache_dir=tmp_path / "cache2").extract(_crops(coll, paths))
    assert np.abs(fp32 - want).max() > 20 * np.abs(got - want).max()  # which fp32 queries were not

    # A query image of the database is its own nearest neighbour at (float16) distance ~0 (its
    # fp32 feature lies far from the stored int8 one: the check above).
    r = runner.invoke(
        app,
        ["search", str(out), str(paths[0]), "--rerank", "10", "--json", "--cache-dir", str(tmp_path / "cache2")],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)[0]["results"][0]
    assert top["path"] == str(paths[0]) and top["distance"] < 0.05, top

    # Additions are extracted by the same int8 model, and the new generation keeps it.
    new = sorted((cifar_small / "train" / "cat").glob("*.jpg"))[:3]
    extra = tmp_path / "extra"
    extra.mkdir()
    for p in new:
        shutil.copy(p, extra / p.name)
    old_model = coll.int8_model
    coll.close()  # an open collection holds its generation; let go, so that the add's save deletes it
    r = runner.invoke(
        app, ["add", str(out), str(extra), "--cache-dir", str(tmp_path / "cache2")], catch_exceptions=False
    )
    assert r.exit_code == 0 and "3 features computed" in r.output, r.output
    coll = Collection.open(out)
    assert not old_model.exists() and coll.int8_model.is_file() and coll.int8_model.parent != old_model.parent
    stored = _stored(coll)
    added = np.stack([stored[str(extra / p.name)] for p in new])
    np.testing.assert_allclose(enc.extract(_crops(coll, new)), added, rtol=2e-3, atol=2e-3)
