"""The MNIST protocols (the RITQ paper's Table II column) on the real archive: sizes, per-digit
counts, determinism by seed, the archive's checksum, and leave-one-out through the runner."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest

from hashsearch.data.protocols import Split, list_protocols, load_protocol, mnist_root, protocol_root
from hashsearch.data.sources import FolderSource

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def root():
    # The user's cache folder, as the benchmarks use it: unpacked once (about 10 s), then reused.
    return mnist_root()


def _relative(root, records) -> list[str]:
    return [r.key[len(str(root)) + 1 :] for r in records]


def test_table2_is_the_papers_protocol(root):
    s = load_protocol("mnist-table2")
    assert isinstance(s, Split) and s.leave_one_out
    assert (len(s.train), len(s.query), len(s.database)) == (60_000, 10_000, 10_000)
    assert [r.key for r in s.query] == [r.key for r in s.database]  # searched within the query set
    assert all(k.startswith("test/") for k in _relative(root, s.query))
    assert all(k.startswith("train/") for k in _relative(root, s.train))
    per_digit = Counter(r.label for r in s.query)
    # The archive's README: 892 to 1,135 test images per digit (about 1k per class).
    assert sorted(per_digit) == DIGITS and min(per_digit.values()) == 892 and max(per_digit.values()) == 1135
    assert "leave-one-out" in s.description and "60,000" in s.description


def test_table2_5k_sizes_per_digit_and_seed(root):
    a, b, c = (load_protocol("mnist-table2-5k", seed=s) for s in (0, 0, 1))
    assert a.leave_one_out and (len(a.train), len(a.query), len(a.database)) == (5_000, 10_000, 10_000)
    assert Counter(r.label for r in a.train) == {d: 500 for d in DIGITS}
    assert all(k.startswith("train/") for k in _relative(root, a.train))
    assert [r.key for r in a.train] == [r.key for r in b.train]  # same seed, same split
    assert len({r.key for r in a.train} & {r.key for r in c.train}) < 1_000  # another seed, another draw
    assert [r.key for r in a.query] == [r.key for r in c.query]  # the query set is not drawn


def test_registered_listed_and_read_from_the_mnist_folder(root):
    assert {"mnist-table2", "mnist-table2-5k"} <= set(list_protocols())
    assert protocol_root("mnist-table2-5k") == root and (root / "test" / "7").is_dir()
    assert len(FolderSource(root / "test").records()) == 10_000
    r = subprocess.run(
        [sys.executable, "-c", "from hashsearch.cli import main; main()", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "mnist-table2-5k" in r.stdout


def test_an_archive_with_another_checksum_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "mnist-png.tar.gz"
    with tarfile.open(fake, "w:gz") as tar:
        (tmp_path / "mnist-png").mkdir()
        tar.add(tmp_path / "mnist-png", arcname="mnist-png")
    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HASHSEARCH_MNIST", str(fake))
    with pytest.raises(ValueError, match="sha256") as e:
        load_protocol("mnist-table2")
    assert "HASHSEARCH_MNIST" in str(e.value) and not (tmp_path / "cache" / "mnist").exists()


def test_leave_one_out_reaches_the_evaluation(root):
    """200 real test digits searched within themselves: each query's own image is left out."""
    from hashsearch.backbones import create_backbone
    from hashsearch.codes import hamming_distances
    from hashsearch.data.sources import open_source
    from hashsearch.experiments.features import FeatureProvider
    from hashsearch.experiments.runner import run_methods

    full = load_protocol("mnist-table2-5k")
    query = [r for d in DIGITS for r in [x for x in full.query if x.label == d][:20]]
    split = Split("mnist-small", full.train[::50], query, query, 0, "200 test digits", leave_one_out=True)
    provider = FeatureProvider(
        open_source(root), split, create_backbone("efficientnet-lite0", input_size=32), log=lambda *_: None
    )
    (loo,) = run_methods(provider, ["itq"], [16], log=lambda *_: None)
    (plain,) = run_methods(provider, ["itq"], [16], leave_one_out=False, log=lambda *_: None)
    assert loo["metrics"]["n_left_out"] == 200 and "n_left_out" not in plain["metrics"]
    # With its own image in the database each query finds it first: P@1 is 1 and mAP higher.
    assert plain["metrics"]["p@100"] > loo["metrics"]["p@100"] and plain["metrics"]["map"] > loo["metrics"]["map"]

    # The reference by hand: each query's AP over the other 199 (ties by database order).
    from hashsearch.hashing import create_hasher

    f = provider.features(None)
    h = create_hasher("itq", n_bits=16, seed=0).fit(f.train.features)
    codes, y = h.encode(f.query.features), f.query.labels
    d = hamming_distances(codes, codes)
    aps = []
    for i in range(len(y)):
        others = np.delete(np.arange(len(y)), i)
        rel = (y[others] == y[i])[np.argsort(d[i, others], kind="stable")]
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, len(rel) + 1))[rel].mean()))
    assert loo["metrics"]["map"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_the_papers_mnist_column_is_quoted_for_the_mnist_protocols():
    from hashsearch.evaluation.published import RITQ_TABLE_II_MNIST, dataset_of, published_map, tables_markdown

    assert dataset_of("mnist-table2-5k") == "mnist" and dataset_of("flowers12") == "flowers12"
    assert dataset_of("cifar10-1k") == dataset_of("unseen-classes") == "cifar10"
    assert published_map("ritq", 48, "mnist") == (0.989, RITQ_TABLE_II_MNIST["source"])
    assert published_map("dlbhc", 64, "mnist")[0] == 0.993 and published_map("sph", 8, "mnist")[0] == 0.381
    assert published_map("dlbhc", 48)[0] == 0.5883  # CIFAR-10 stays the default
    assert published_map("itq", 48, "flowers12") is None and tables_markdown("flowers12") == ""
    md = tables_markdown("mnist")
    assert "MNIST columns" in md and "0.9080" in md and "DFEH" not in md
