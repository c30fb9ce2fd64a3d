"""build_collection and add_images on real folders (issue 18): duplicates by content, the root
entries are stored under, max_pixels, and a skip list that names every file not indexed."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from hashsearch.backbones import create_backbone
from hashsearch.collection import Collection
from hashsearch.data.sources import FolderSource, unescape_name
from hashsearch.hashing import create_hasher
from hashsearch.pipeline import add_images, build_collection

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bb():
    return create_backbone("efficientnet-lite0", input_size=64)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")  # shared: the ONNX export happens once


@pytest.fixture(scope="module")
def photos(cifar_small, tmp_path_factory):
    """cat/ and dog/ with 3 real JPEGs each; cat/copy.jpg repeats cat's first, dog/again.jpg too."""
    root = tmp_path_factory.mktemp("dups") / "photos"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for p in sorted((cifar_small / "test" / cls).glob("*.jpg"))[:3]:
            shutil.copy(p, root / cls / p.name)
    first = sorted((root / "cat").glob("*.jpg"))[0]
    shutil.copy(first, root / "cat" / "copy.jpg")
    shutil.copy(first, root / "dog" / "again.jpg")
    return root


def build(source, bb, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_collection(
            source, bb, create_hasher("itq", n_bits=16, seed=0), cache_dir=cache, progress=False, workers=0, **kw
        )


def add(coll, source, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return add_images(coll, source, cache_dir=cache, progress=False, workers=0, **kw)


def test_build_skips_duplicates_by_content_unless_asked(photos, bb, cache):
    first = str(sorted((photos / "cat").glob("0*.jpg"))[0])
    coll, report = build(FolderSource(photos), bb, cache)
    assert len(coll) == report.n_indexed == 6
    assert report.duplicates == [(str(photos / "cat" / "copy.jpg"), first), (str(photos / "dog" / "again.jpg"), first)]
    assert "; 2 duplicates skipped;" in report.summary()
    assert (
        f"2 duplicates skipped (keep them with keep_duplicates=True): {photos}/cat/copy.jpg "
        f"(same bytes as {first})" in report.summary()
    )
    # Stored relative to the source's folder (its `root`).
    keys = sorted(e["key"] for e in coll.entries(range(len(coll))))
    assert keys == sorted(f"{p.parent.name}/{p.name}" for p in photos.rglob("0*.jpg"))
    kept, report = build(FolderSource(photos), bb, cache, keep_duplicates=True)
    assert len(kept) == 8 and report.duplicates == []
    d = {e["key"]: e["digest"] for e in kept.entries(range(8))}
    assert d["cat/copy.jpg"] == d["dog/again.jpg"] == d[os.path.relpath(first, photos)]


def test_add_skips_images_the_collection_holds(photos, bb, cache, tmp_path, cifar_small):
    coll, _ = build(FolderSource(photos), bb, cache)
    coll.save(tmp_path / "p.hsx")
    coll = Collection.open(tmp_path / "p.hsx")
    ids, report = add(coll, FolderSource(photos), cache)
    assert len(ids) == 0 and len(report.duplicates) == 8 and not coll.dirty and len(coll) == 6
    by_key = {e["key"]: e["id"] for e in coll.entries(range(6))}
    copy = dict(report.duplicates)[str(photos / "cat" / "copy.jpg")]
    first = sorted(k for k in by_key if k.startswith("cat/"))[0]
    assert copy == f"id {by_key[first]} ({first})"
    # A folder with one new image and one already held: only the new one is added.
    extra = tmp_path / "extra"
    extra.mkdir()
    new = sorted((cifar_small / "test" / "frog").glob("*.jpg"))[0]
    shutil.copy(new, extra / "new.jpg")
    shutil.copy(photos / "cat" / "copy.jpg", extra / "old.jpg")
    ids, report = add(coll, FolderSource(extra), cache)
    assert len(ids) == 1 and coll.entries(ids)[0]["key"] == "new.jpg" and len(report.duplicates) == 1
    assert coll.entries(ids)[0]["path"] == str(extra / "new.jpg")
    ids, report = add(coll, FolderSource(extra), cache, keep_duplicates=True)
    assert len(ids) == 2 and report.duplicates == []


def test_max_pixels_reaches_decoding_in_build_and_add(tmp_path, bb, cache, cifar_small):
    folder = tmp_path / "sizes"
    folder.mkdir()
    small = sorted((cifar_small / "test" / "cat").glob("*.jpg"))[0]
    shutil.copy(small, folder / "small.jpg")  # 32 x 32 = 1,024 px
    Image.open(small).resize((200, 200)).save(folder / "large.png")  # 40,000 px
    coll, report = build(FolderSource(folder), bb, cache, max_pixels=10_000)
    assert len(coll) == 1 and [os.path.basename(k) for k, _ in report.skipped.skipped] == ["large.png"]
    assert "--max-pixels 40000" in report.skipped.skipped[0][1] and "max_pixels=40000" in report.skipped.skipped[0][1]
    ids, report = add(coll, FolderSource(folder), cache, max_pixels=10_000)
    assert len(ids) == 0 and len(report.skipped) == 1
    ids, report = add(coll, FolderSource(folder), cache, max_pixels=40_000)
    assert len(ids) == 1 and coll.entries(ids)[0]["key"] == "large.png"
    coll, report = build(FolderSource(folder), bb, cache, max_pixels=40_000)
    assert len(coll) == 2 and len(report.skipped) == 0
    # The features of large.png are cached now: the limit still decides, as for a decoded file.
    coll, report = build(FolderSource(folder), bb, cache, max_pixels=10_000)
    assert len(coll) == 1 and report.n_computed == 0
    assert [(os.path.basename(k), "--max-pixels 40000" in why) for k, why in report.skipped.skipped] == [
        ("large.png", True)
    ]
    ids, report = add(coll, FolderSource(folder), cache, max_pixels=10_000, keep_duplicates=True)
    assert [coll.entries(ids)[0]["key"]] == ["small.jpg"] and len(report.skipped) == 1


def test_the_skip_list_names_every_file_not_indexed(tmp_path, bb, cache, photos):
    root = tmp_path / "mixed"
    shutil.copytree(photos, root)
    (root / "cat" / "notes.jpg").write_text("not a picture")
    (root / "README.txt").write_text("about these photos")
    (root / ".DS_Store").write_bytes(b"\0\0")
    odd = os.path.join(os.fsencode(root / "cat"), b"caf\xe9\tcopy.jpg")  # a tab and a Latin-1 byte
    shutil.copy(root / "cat" / "copy.jpg", odd)
    coll, report = build(FolderSource(root), bb, cache)
    out = tmp_path / "skipped.tsv"
    assert report.write_skip_list(out) == 6  # 3 duplicates, notes.jpg, README.txt, .DS_Store
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "key\treason" and all(line.count("\t") == 1 for line in lines)
    rows = {unescape_name(k): unescape_name(r) for k, r in (line.split("\t") for line in lines[1:])}
    indexed = {e["path"] for e in coll.entries(range(len(coll)))}
    on_disk = {os.fsdecode(os.path.join(os.fsencode(d), f)) for d, _, fs in os.walk(os.fsencode(root)) for f in fs}
    assert set(rows) == on_disk - indexed and len(rows) == 6
    assert rows[os.fsdecode(odd)].startswith("duplicate: the same bytes as ")
    assert rows[str(root / "README.txt")] == "not an image (by extension)"
    assert rows[str(root / ".DS_Store")] == "hidden"
    assert rows[str(root / "cat" / "notes.jpg")].startswith("not an image: it holds text")


def test_a_supervised_method_without_labels_says_what_it_saw(tmp_path, bb, cache, cifar_small):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((cifar_small / "test").rglob("*.jpg"))[:6]:
        shutil.copy(p, flat / f"{p.parent.name}-{p.name}")
    with pytest.raises(
        ValueError,
        match=r"'cca-itq' learns from labels, but none of the 6 images has one \(labels: "
        r"none: no image is in a class folder below the source folder\)",
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_collection(
                FolderSource(flat), bb, create_hasher("cca-itq", n_bits=8), cache_dir=cache, progress=False, workers=0
            )
    # With class folders and one stray image, the method learns from the labelled ones.
    tree = tmp_path / "tree"
    for p in sorted((cifar_small / "test").rglob("*.jpg"))[:12]:
        (tree / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, tree / p.parent.name / p.name)
    shutil.copy(sorted((cifar_small / "train").rglob("*.jpg"))[0], tree / "cover.jpg")
    (tree / "notes.jpg").write_text("not a picture")  # unlabelled too, but skipped: not counted as unlabelled
    shutil.copy(tree / "cover.jpg", tree / "cover copy.jpg")  # a duplicate, dropped: not counted either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, report = build_collection(
            FolderSource(tree), bb, create_hasher("cca-itq", n_bits=8), cache_dir=cache, progress=False, workers=0
        )
    assert len(coll) == 13 and "1 image has no label: " in report.summary() and "cover.jpg" in report.summary()
    labels = [e["label"] for e in coll.entries(range(13))]
    assert labels.count(None) == 1 and len(set(labels)) == 4  # airplane, automobile, bird, and None
    assert np.isfinite(coll.features_of(np.arange(13)).astype(np.float32)).all()


def test_an_unknown_back_end_or_engine_is_refused_before_any_work(tmp_path, bb, cache, photos):
    for kw, what in (({"index": "nosuch"}, "unknown index back end 'nosuch'"), ({"engine": "spark"}, "engine must be")):
        with pytest.raises(ValueError, match=what):
            build(FolderSource(photos), bb, tmp_path / "empty-cache", **kw)
        assert not (tmp_path / "empty-cache" / "features").exists() or not any(
            (tmp_path / "empty-cache" / "features").iterdir()
        )
