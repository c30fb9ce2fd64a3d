"""The local engine: same result with or without worker processes (decoding, or decoding and
extracting, there); resume; draft."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from hashsearch.backbones import create_backbone
from hashsearch.backbones.runtime import FeatureExtractor, make_extractor
from hashsearch.data.decode import decode_image
from hashsearch.data.sources import FolderSource
from hashsearch.pipeline import local, steps
from hashsearch.pipeline.local import extract_features
from hashsearch.pipeline.steps import decode_batch
from hashsearch.pipeline.workers import WorkerPool, bounded, crops

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet-lite0", input_size=64)


def _extract(folder, backbone, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_features(FolderSource(folder), backbone, cache_dir=cache, progress=False, batch_size=8, **kw)


@pytest.mark.parametrize("worker_inference", [True, False], ids=["extract-in-workers", "decode-in-workers"])
def test_worker_processes_give_the_in_process_result(tmp_path, folder_with_bad, backbone, worker_inference):
    inline = _extract(folder_with_bad, backbone, tmp_path / "a", workers=0)
    pooled = _extract(folder_with_bad, backbone, tmp_path / "b", workers=2, worker_inference=worker_inference)
    assert [r.key for r in pooled.records] == [r.key for r in inline.records]
    assert pooled.report.skipped == inline.report.skipped
    assert len(inline.report) == 2 and len(inline.records) == 41
    reasons = dict(inline.report.skipped)
    assert any("notes.jpg" in k and "not an image" in v for k, v in reasons.items())
    np.testing.assert_allclose(pooled.features, inline.features, atol=1e-5)
    assert inline.n_computed == pooled.n_computed == 40  # the duplicate is extracted once


class _Counting(FeatureExtractor):
    """A feature extractor (not portable: it runs in this process) that counts the images it
    extracts, by the one it wraps; can fail."""

    runtime = "counting"

    def __init__(self, inner, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.calls, self.images = inner, fail_after, 0, 0
        self.backbone, self.preprocess = inner.backbone, inner.preprocess
        self.feature_dim, self.cache_key = inner.feature_dim, inner.cache_key

    def extract(self, pixels):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.images += len(pixels)
        return self.inner.extract(pixels)


def test_resume_after_interruption_recomputes_nothing_cached(tmp_path, folder_with_bad, backbone):
    src = FolderSource(folder_with_bad)
    enc = make_extractor(backbone, "onnx", cache_dir=tmp_path)
    first = _Counting(enc, fail_after=2)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_features(src, backbone, cache_dir=tmp_path, progress=False, batch_size=8, workers=1, extractor=first)
    assert first.images == 16
    second = _Counting(enc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = extract_features(
            src, backbone, cache_dir=tmp_path, progress=False, batch_size=8, workers=1, extractor=second
        )
    assert out.n_computed == second.images == 40 - 16  # the 16 finished before the interruption are reused
    full = _extract(folder_with_bad, backbone, tmp_path / "fresh", workers=0)
    np.testing.assert_allclose(out.features, full.features, atol=1e-5)
    third = _Counting(enc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = extract_features(src, backbone, cache_dir=tmp_path, progress=False, workers=0, extractor=third)
    assert third.images == 0 and again.n_computed == 0


class _Interrupted(FolderSource):
    """A folder whose reading stops with a KeyboardInterrupt at its `after`-th file."""

    def __init__(self, root, after: int) -> None:
        super().__init__(root)
        self.after = after

    def iter_bytes(self, records):
        for i, item in enumerate(super().iter_bytes(records)):
            if i == self.after:
                raise KeyboardInterrupt("simulated interruption")
            yield item


@pytest.mark.parametrize("worker_inference", [True, False], ids=["extract-in-workers", "decode-in-workers"])
def test_resume_keeps_the_batches_that_workers_finished(
    tmp_path, folder_with_bad, backbone, monkeypatch, worker_inference
):
    # Chunks of 8 files, 2 ahead: reading stops in the 5th chunk, when the first two are finished.
    monkeypatch.setattr(steps, "CHUNK", 8)
    run = dict(cache_dir=tmp_path, progress=False, batch_size=4, workers=2, worker_inference=worker_inference)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_features(_Interrupted(folder_with_bad, after=36), backbone, **run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = extract_features(FolderSource(folder_with_bad), backbone, **run)
    full = _extract(folder_with_bad, backbone, tmp_path / "fresh", workers=0)
    first16 = {r.key for r in FolderSource(folder_with_bad).records()[:16]}
    finished = {d for r, d in zip(full.records, full.digests) if r.key in first16}
    assert len(finished) >= 14 and out.n_computed == 40 - len(finished)  # nothing finished is recomputed
    assert out.digests == full.digests
    np.testing.assert_allclose(out.features, full.features, atol=1e-5)


def test_chunks_end_at_a_byte_bound_and_give_the_same_result(tmp_path, folder_with_bad, backbone, monkeypatch):
    # Large photos: a chunk of 512 files could hold gigabytes; it ends once its files hold CHUNK_BYTES.
    sizes = []
    start = local._start_chunk

    def recording(run, chunk, *args):
        sizes.append([len(data or b"") for _, data, _ in chunk])
        return start(run, chunk, *args)

    monkeypatch.setattr(local, "_start_chunk", recording)
    monkeypatch.setattr(steps, "CHUNK_BYTES", 5000)
    out = _extract(folder_with_bad, backbone, tmp_path / "small", workers=2)
    assert len(sizes) > 5 and sum(map(len, sizes)) == 43
    assert all(sum(s[:-1]) < 5000 for s in sizes)  # each chunk stops at the file that reaches the bound
    assert all(sum(s) >= 5000 for s in sizes[:-1])
    monkeypatch.undo()
    full = _extract(folder_with_bad, backbone, tmp_path / "full", workers=2)
    assert out.digests == full.digests and out.report.skipped == full.report.skipped
    np.testing.assert_array_equal(out.features, full.features)


def test_large_jpeg_decodes_in_draft_mode(backbone):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1200, 3), np.uint8))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    small = decode_image(data, "big.jpg", draft=(128, 128))
    assert small.size == (300, 225)  # 1/4 scale: the smallest that keeps both sides >= 128
    assert decode_image(data, "big.jpg").size == (1200, 900)
    digests, pixels, failed = decode_batch([("d", "big.jpg", data)], backbone.preprocess, 10**8)
    assert digests == ["d"] and pixels.shape == (1, 3, 64, 64) and not failed
    # Workers hand uint8 crops to the inference process; normalising there gives the same floats.
    _, crops, _ = decode_batch([("d", "big.jpg", data)], backbone.preprocess, 10**8, normalize=False)
    assert crops.dtype == np.uint8 and crops.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(backbone.preprocess.normalize(crops), pixels)


def test_bounded_keeps_at_most_depth_in_flight():
    started, finished, peak = [], [], [0]

    def start(i):
        started.append(i)
        peak[0] = max(peak[0], len(started) - len(finished))
        return i

    bounded(range(10), start, finished.append, depth=2)
    assert finished == list(range(10)) and peak[0] == 3  # depth waiting + the one being started


def test_workers_must_be_non_negative(backbone):
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        WorkerPool(crops(backbone.preprocess, 10**8), -1)


def test_batch_extractor_travels_without_its_session(folder_with_bad, backbone, tmp_path):
    import pickle

    from hashsearch.pipeline.steps import BatchExtractor, worker_model

    enc = make_extractor(backbone, "onnx", cache_dir=tmp_path)
    src = FolderSource(folder_with_bad)
    jobs = [(str(i), r.key, d) for i, (r, d, e) in enumerate(src.iter_bytes(src.records()[:12])) if e is None and d]
    task = BatchExtractor(backbone.preprocess, 10**8, enc.feature_dim, model=worker_model(enc, jobs, 10**8))
    digests, feats, failed = task(jobs)
    assert feats.shape == (len(digests), enc.feature_dim) and len(digests) + len(failed) == len(jobs)
    copy = pickle.loads(pickle.dumps(task))  # as a Ray actor or a spawned worker receives it
    assert copy._session is None and task._session is not None
    np.testing.assert_array_equal(copy(jobs)[1], feats)
    # The same features as the extractor in this process (one thread there, every core here).
    np.testing.assert_allclose(
        enc.extract(decode_batch(jobs, backbone.preprocess, 10**8, normalize=False)[1]), feats, atol=1e-5
    )


@pytest.mark.parametrize("grpc_client", [False, True])
def test_workers_fork_unless_a_grpc_client_lives_in_the_process(grpc_client):
    """A forked copy of a process holding gRPC's threads (a Milvus collection opened by `add`) can die
    (CI: BrokenProcessPool after gRPC's 'skipping fork() handlers'): with gRPC loaded the workers start
    from a forkserver, and still run the task; without it they fork (cheap). In a child interpreter, so
    that the test process's own imports do not decide it."""
    if grpc_client:
        pytest.importorskip("grpc")
    code = (
        ("import grpc; channel = grpc.insecure_channel('127.0.0.1:9'); " if grpc_client else "")
        + "from hashsearch.pipeline.workers import WorkerPool\n"
        "with WorkerPool(len, 2) as pool:\n"
        "    print(pool.submit([1, 2, 3]).result(), pool.start_method)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "forkserver" if grpc_client else "fork"]
