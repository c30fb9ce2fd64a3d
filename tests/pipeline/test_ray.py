"""The Ray Data engine on a real local Ray (2 CPUs): the index equals the single-process one."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import FolderSource, TarSource
from hashsearch.hashing import create_hasher
from hashsearch.pipeline import build_collection
from hashsearch.pipeline.ray_engine import extract_features_ray, plan_actors

ray = pytest.importorskip("ray")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _build(folder, cache, **kw):
    bb = create_backbone("efficientnet-lite0", input_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_collection(
            FolderSource(folder),
            bb,
            create_hasher("itq", n_bits=32, seed=0),
            cache_dir=cache,
            progress=False,
            batch_size=8,
            **kw,
        )


def test_ray_index_equals_single_process_index(tmp_path, folder_with_bad, local_ray):
    local, local_report = _build(folder_with_bad, tmp_path / "local", engine="local", workers=0)
    t = time.perf_counter()
    # The default actor pool on 2 CPUs: fractional CPUs, so the read tasks are not starved (a
    # pool claiming both CPUs hangs; this finishing at all is the test of that). The bound is a
    # hang detector, not a speed target: about a minute here, several on a busy 2-core machine.
    distributed, ray_report = _build(folder_with_bad, tmp_path / "ray", engine="ray")
    assert time.perf_counter() - t < 300
    assert ray_report.n_computed == local_report.n_computed == 40
    assert ray_report.skipped.skipped == local_report.skipped.skipped
    assert len(ray_report.skipped) == 2
    assert ray_report.duplicates == local_report.duplicates and len(local_report.duplicates) == 1
    n = len(local)
    assert len(distributed) == n == 40
    assert distributed.entries(range(n)) == local.entries(range(n))
    np.testing.assert_array_equal(distributed.index._codes[:n], local.index._codes[:n])
    np.testing.assert_array_equal(distributed.index._ids[:n], local.index._ids[:n])
    # A rerun computes nothing: everything comes from the feature cache.
    _, again = _build(folder_with_bad, tmp_path / "ray", engine="ray")
    assert again.n_computed == 0 and again.skipped.skipped == local_report.skipped.skipped


def test_ray_reads_an_archive_as_the_local_pipeline_does(tmp_path, folder_with_bad, local_ray):
    """Actors read by key: members of a compressed archive (read in passes), bad ones included."""
    import tarfile

    from hashsearch.pipeline.local import extract_features

    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder_with_bad, arcname="photos")
    source, bb = TarSource(archive), create_backbone("efficientnet-lite0", input_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = extract_features(source, bb, cache_dir=tmp_path / "local", progress=False, batch_size=8, workers=0)
        remote = extract_features_ray(source, bb, cache_dir=tmp_path / "ray", progress=False, batch_size=8)
    assert remote.n_computed == local.n_computed == 40
    assert remote.n_cached == local.n_cached == 0  # the duplicate file is neither cached nor computed twice
    assert [r.key for r in remote.records] == [r.key for r in local.records] and len(local.records) == 41
    assert remote.digests == local.digests
    assert remote.report.skipped == local.report.skipped and len(local.report) == 2
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)


def test_actor_pool_that_claims_every_cpu_is_refused():
    assert plan_actors(2, None, 0.5) == (2, 1)  # one actor per CPU, one thread each
    assert plan_actors(32, None, 0.5) == (32, 1)
    assert plan_actors(2, None, 1.0) == (1, 2)  # whole CPUs: one actor, half a CPU kept spare
    assert plan_actors(4, 2, 0.5) == (2, 2)
    with pytest.raises(ValueError, match="actors must be"):
        plan_actors(2, 0, 0.5)
    with pytest.raises(ValueError, match="read tasks would starve"):
        plan_actors(2, 2, 1.0)
    with pytest.raises(ValueError, match="spare_cpus"):
        plan_actors(2, None, 0.5, spare_cpus=0)
