"""`hashsearch index` encoding options: --runtime, --int8, --engine/--address."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hashsearch.cli import app

runner = CliRunner()


def test_index_with_int8_and_torch_runtime(cifar_small, tmp_path):
    cache = tmp_path / "cache"
    common = ["index", str(cifar_small / "test"), "--bits", "16", "--input-size", "64", "--cache-dir", str(cache)]
    r = runner.invoke(app, common + ["--out", str(tmp_path / "a.hsx"), "--int8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "40 features computed" in r.output
    # PyTorch shares fp32's cache key, not int8's: it computes all 40 again.
    r = runner.invoke(app, common + ["--out", str(tmp_path / "b.hsx"), "--runtime", "torch"], catch_exceptions=False)
    assert r.exit_code == 0 and "40 features computed" in r.output, r.output
    r = runner.invoke(app, common + ["--out", str(tmp_path / "c.hsx")], catch_exceptions=False)
    assert r.exit_code == 0 and "0 features computed, 40 from the cache" in r.output, r.output
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "c.hsx")]).output)
    assert info["count"] == 40


def test_address_needs_the_ray_engine(cifar_small, tmp_path):
    r = runner.invoke(app, ["index", str(cifar_small / "test"), "--out", str(tmp_path / "x.hsx"),
                            "--address", "auto"])
    assert r.exit_code != 0 and "--engine ray" in r.output
