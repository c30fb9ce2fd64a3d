"""Split protocols: seeded, stable, disjoint where they should be; the CIFAR-10 ones on the real data."""

from __future__ import annotations

import hashlib
import os
import random
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

import hashsearch.data.protocols as P
from hashsearch.data.protocols import (
    Split,
    cifar10_archive,
    cifar10_root,
    list_protocols,
    load_protocol,
    split_by_class,
)
from hashsearch.data.sources import FolderSource, ImageRecord
from hashsearch.paths import cache_dir

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic(n_per_class: int = 30, classes=("a", "b", "c")) -> list[ImageRecord]:
    return [ImageRecord(f"data/{c}/{i:03d}.jpg", c) for c in classes for i in range(n_per_class)]


def keys(records) -> list[str]:
    return [r.key for r in records]


def test_split_by_class_sizes_and_disjointness():
    records = synthetic()
    s = split_by_class(records, queries_per_class=5, train_per_class=10, seed=0, name="t")
    assert isinstance(s, Split) and s.name == "t" and s.seed == 0
    assert len(s.query) == 15 and len(s.train) == 30 and len(s.database) == 75
    assert Counter(r.label for r in s.query) == {"a": 5, "b": 5, "c": 5}
    assert not set(keys(s.query)) & set(keys(s.database))
    assert not set(keys(s.query)) & set(keys(s.train))
    assert set(keys(s.train)) <= set(keys(s.database))  # "rest": training images are in the database
    assert all(keys(part) == sorted(keys(part)) for part in (s.train, s.query, s.database))
    assert "15 queries" in s.description

    s2 = split_by_class(records, 5, 10, seed=0, database="rest-minus-train")
    assert len(s2.database) == 45 and not set(keys(s2.train)) & set(keys(s2.database))
    assert set(keys(s2.query) + keys(s2.train) + keys(s2.database)) == set(keys(records))

    everything = split_by_class(records, 5, None)
    assert len(everything.train) == 75


def test_split_by_class_is_deterministic_and_seeded():
    records = synthetic()
    a = split_by_class(records, 5, 10, seed=0)
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    b = split_by_class(shuffled, 5, 10, seed=0)  # input order does not matter
    assert (a.query, a.train, a.database) == (b.query, b.train, b.database)
    c = split_by_class(records, 5, 10, seed=1)
    assert keys(c.query) != keys(a.query)
    # A class's draw does not depend on which other classes exist.
    only_a = split_by_class([r for r in records if r.label == "a"], 5, 10, seed=0)
    assert keys(only_a.query) == [r.key for r in a.query if r.label == "a"]


def test_split_by_class_errors():
    with pytest.raises(ValueError, match="class 'b' has 3 images, but the split needs 15 per class"):
        split_by_class(synthetic(30, ("a",)) + synthetic(3, ("b",)), 5, 10)
    with pytest.raises(ValueError, match="2 of 32 records have no label"):
        split_by_class(synthetic(30, ("a",)) + [ImageRecord("x.jpg"), ImageRecord("y.jpg")], 1, 1)
    with pytest.raises(ValueError, match="database must be one of 'rest', 'rest-minus-train'"):
        split_by_class(synthetic(), 1, 1, database="all")
    with pytest.raises(ValueError, match="queries_per_class must be a non-negative integer, got -1"):
        split_by_class(synthetic(), -1, 1)
    with pytest.raises(ValueError, match="seed must be"):
        split_by_class(synthetic(), 1, 1, seed=-2)


def test_split_of_a_real_folder(cifar_small):
    s = split_by_class(FolderSource(cifar_small).records(), 2, 6, seed=0)
    assert len(s.query) == 20 and len(s.train) == 60 and len(s.database) == 100


def test_cache_dir_and_archive_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HASHSEARCH_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "hashsearch"

    monkeypatch.delenv("HASHSEARCH_CIFAR10", raising=False)
    assert cifar10_archive().name == "cifar10-jpg.tar.gz"  # found beside the checkout
    monkeypatch.setenv("HASHSEARCH_CIFAR10", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(FileNotFoundError, match="HASHSEARCH_CIFAR10 is set to .*nope.tar.gz"):
        cifar10_archive()


def test_wrong_archive_is_refused_before_unpacking(tmp_path, monkeypatch):
    fake = tmp_path / "fake.tar.gz"
    with tarfile.open(fake, "w:gz") as tar:
        (tmp_path / "f.txt").write_text("x")
        tar.add(tmp_path / "f.txt", arcname="train/f.txt")
    monkeypatch.setenv("HASHSEARCH_CIFAR10", str(fake))
    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"has sha256 .* but .* {P.CIFAR10_SHA256}"):
        cifar10_root()
    assert not (tmp_path / "cache" / "cifar10").exists()
    assert not list((tmp_path / "cache").glob(".cifar10*"))  # nothing half-unpacked left behind


def test_never_unpacks_into_the_checkout(monkeypatch):
    checkout = Path(P.__file__).resolve().parents[3]
    monkeypatch.setenv("HASHSEARCH_CACHE", str(checkout / "some-cache"))
    with pytest.raises(ValueError, match="never unpacked into the repository"):
        cifar10_root()
    assert not (checkout / "some-cache").exists()


def test_registry_lists_protocols():
    assert list_protocols() == [
        "cifar10-1k",
        "cifar10-all",
        "cifar10-demo",
        "flowers12",
        "mnist-table2",
        "mnist-table2-5k",
        "unseen-classes",
    ]
    with pytest.raises(ValueError, match="unknown protocol 'cifar100'; choose one of: cifar10-1k"):
        load_protocol("cifar100")


# -- the real CIFAR-10 (JPEG): unpacked once for this module, into a temporary cache ----------


@pytest.fixture(scope="module")
def cifar_cache():
    """CIFAR-10 (JPEG) unpacked by cifar10_root into a test cache, never the user's own.

    Writing 60,000 files takes 10-30 s on a busy disk, so the test cache sits in the system's
    temporary folder and later test runs reuse it (cifar10_root's marker file tells a finished
    unpacking from an interrupted one; two sessions unpacking at once both end up with one copy).
    """
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HASHSEARCH_CACHE", str(Path(tempfile.gettempdir()) / f"hashsearch-test-cache-{user}"))
        mp.delenv("HASHSEARCH_CIFAR10", raising=False)
        yield cifar10_root()


def relative(split_part, root: Path) -> list[str]:
    return [Path(r.key).relative_to(root).as_posix() for r in split_part]


def test_cifar10_root_unpacks_once(cifar_cache):
    assert cifar_cache == cache_dir() / "cifar10"
    assert sorted(p.name for p in cifar_cache.iterdir()) == [P._MARKER, "test", "train"]
    t = time.perf_counter()
    assert cifar10_root() == cifar_cache
    assert time.perf_counter() - t < 0.5


def test_cifar10_1k(cifar_cache):
    s = load_protocol("cifar10-1k", seed=0)
    assert (len(s.query), len(s.train), len(s.database)) == (1000, 5000, 59000)
    assert Counter(r.label for r in s.query) == {c: 100 for c in CLASSES}
    assert Counter(r.label for r in s.train) == {c: 500 for c in CLASSES}
    q, t, d = relative(s.query, cifar_cache), relative(s.train, cifar_cache), relative(s.database, cifar_cache)
    assert all(k.startswith("test/") for k in q) and all(k.startswith("train/") for k in t)
    assert not set(q) & set(d) and set(t) <= set(d)
    assert "1,000 queries" in s.description and "59,000" in s.description
    # Stable across runs and machines: a fingerprint of the query and training keys for seed 0.
    digest = hashlib.sha256("\n".join(q + t).encode()).hexdigest()[:16]
    assert digest == CIFAR10_1K_SEED0
    again = load_protocol("cifar10-1k", seed=0)
    assert again.query == s.query and again.train == s.train
    other = load_protocol("cifar10-1k", seed=1)
    assert other.query != s.query and len(other.database) == 59000


def test_cifar10_all_and_demo(cifar_cache):
    full = load_protocol("cifar10-all")
    assert (len(full.query), len(full.train), len(full.database)) == (10000, 50000, 50000)
    assert full.train == full.database and not set(keys(full.query)) & set(keys(full.train))
    demo = load_protocol("cifar10-demo")
    assert (len(demo.query), len(demo.train), len(demo.database)) == (200, 2000, 9800)
    assert Counter(r.label for r in demo.query) == {c: 20 for c in CLASSES}
    assert Counter(r.label for r in demo.train) == {c: 200 for c in CLASSES}
    assert set(relative(demo.database, cifar_cache)) == set(relative(full.query, cifar_cache)) - set(
        relative(demo.query, cifar_cache)
    )


# sha256 of the relative keys of cifar10-1k's queries then training images, seed 0 (first 16 hex).
# Computed once; the same on any machine and any cache location (also from the archive listing).
CIFAR10_1K_SEED0 = "86de7814e1cf67d8"
