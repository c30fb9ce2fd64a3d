"""A save shares what did not change: the files of a new generation whose part is unchanged are
hard links to the previous generation's (same inode), on real CIFAR-10 images with a real trained
model file; the old generation is never written into (its index memory-mapped, then added to),
deleting it leaves the live one whole, and a link the file system refuses becomes a copy."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.collection import RERANK_STORE_FILE, Collection
from hashsearch.data.sources import open_source
from hashsearch.fileio import file_sha256
from hashsearch.hashing import create_hasher
from hashsearch.model import TrainedModel
from hashsearch.pipeline.local import extract_pixels

N_FIRST = 60  # of the 80 training images of cifar_small: saved first; the other 20 are added


@pytest.fixture(scope="module")
def real(cifar_small, tmp_path_factory):
    """The 80 training images of `cifar_small` copied to a folder of their own (keys, labels) and
    EfficientNet-Lite0 features at 32 px of them and of the 40 test images (queries)."""
    backbone = create_backbone("efficientnet-lite0", input_size=32)
    folder = tmp_path_factory.mktemp("links") / "photos"
    shutil.copytree(cifar_small / "train", folder)

    def features(where):
        source = open_source(where)
        kept, pixels, _ = extract_pixels(source, source.records(), backbone.preprocess, progress=False)
        return kept, backbone.forward(backbone.preprocess.normalize(pixels))

    kept, X = features(folder)
    _, Q = features(cifar_small / "test")
    return backbone, folder, [r.key for r in kept], [r.label for r in kept], X, Q


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Where a loaded model unpacks its weights for the backbone: a fresh folder per test.
    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))


def saved(real, path: Path, index: str = "flat") -> Path:
    """A collection of the first N_FIRST images (trained model file, pca-16 re-rank store) saved at
    `path`; returns its generation folder."""
    backbone, folder, keys, labels, X, _ = real
    hasher = create_hasher("itq", n_bits=32, seed=0).fit(X)
    model = TrainedModel.from_trained(backbone, hasher, {"note": "tests/test_collection_links.py"})
    coll = Collection.create(model.backbone(), hasher, index=index, rerank_store="pca-16", model=model)
    coll.add(X[:N_FIRST], keys[:N_FIRST], labels[:N_FIRST], root=folder)
    return coll.save(path)


def files(gen: Path) -> list[str]:
    return sorted(str(p.relative_to(gen)) for p in gen.rglob("*") if p.is_file())


def keep_links(gen: Path, keep: Path) -> dict[str, str]:
    """Hard-link every file of `gen` under `keep` (so its data can be read after the generation
    folder is deleted); returns each file's sha256."""
    for rel in files(gen):
        (keep / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(gen / rel, keep / rel)
    return {rel: file_sha256(keep / rel) for rel in files(keep)}


def results(coll: Collection, Q: np.ndarray):
    """What a user sees: Hamming and coarse-to-fine neighbours, and the records of the hits."""
    plain, fine = coll.search(Q, k=10), coll.search(Q, k=10, rerank=30)
    return (
        plain.ids.tolist(),
        plain.distances.tolist(),
        fine.ids.tolist(),
        fine.distances.tolist(),
        [(e["key"], e["label"], e["path"]) for e in coll.entries(np.unique(plain.ids[plain.ids >= 0]))],
    )


@pytest.mark.parametrize("index", ["flat", "mih"])
def test_an_add_links_the_unchanged_files_and_writes_the_changed_ones(real, tmp_path, index):
    _, folder, keys, labels, X, Q = real
    path = tmp_path / "c.hsx"
    gen1 = saved(real, path, index)
    before = {rel: os.stat(gen1 / rel).st_ino for rel in files(gen1)}
    old = keep_links(gen1, tmp_path / "keep")
    coll = Collection.open(path)
    coll.add(X[N_FIRST:], keys[N_FIRST:], labels[N_FIRST:], root=folder)
    expected = results(coll, Q)
    gen2 = coll.save(path)
    assert not gen1.exists() and set(files(tmp_path / "keep")) < set(files(gen2))
    st = {rel: os.stat(gen2 / rel) for rel in files(gen2)}
    same = {rel for rel in st if st[rel].st_ino == before.get(rel)}
    # Every file of the previous generation is shared (model, hasher, store, and the base's index,
    # rows and entries); the added entries are a delta of their own, written.
    assert same == set(before) - {"manifest.json"}
    assert set(st) - same == {"manifest.json"} | {
        f"{p}.000002{s}" for p, s in [("entries", ".sqlite"), ("features", ".npy"), ("feature_ids", ".npy")]
    } | {rel for rel in st if rel.startswith("index.000002/")}
    assert all(st[rel].st_nlink == 2 for rel in same)  # this generation's name and keep/'s
    assert all(st[rel].st_nlink == 1 for rel in set(st) - same)
    assert back_manifest_deltas(path) == ["000002"]
    # Their sha256 in the new manifest is the old one, and every file checks (open verifies them all).
    back = Collection.open(path)
    assert all(back.manifest["files"][rel] == old[rel] for rel in same)
    assert results(back, Q) == expected and len(back) == len(X)
    # The old generation's data, deleted by the save but kept by keep/'s links, was never written into.
    assert {rel: file_sha256(tmp_path / "keep" / rel) for rel in old} == old


def test_a_save_that_changes_only_the_entries_links_the_index_and_features(real, tmp_path):
    """A relocate changes the entries database alone: index, re-rank rows, hasher, store and model
    are the previous generation's inodes; then an add writes the index and rows again."""
    _, folder, keys, labels, X, Q = real
    path = tmp_path / "c.hsx"
    gen1 = saved(real, path, "mih")
    before = {rel: os.stat(gen1 / rel).st_ino for rel in files(gen1)}
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    coll = Collection.open(path)
    ids_before = results(coll, Q)[:4]
    assert coll.relocate(folder, moved) == N_FIRST
    gen2 = coll.save(path)
    same = {rel for rel in files(gen2) if os.stat(gen2 / rel).st_ino == before.get(rel)}
    # The folder moved as a whole: the roots table changed, no entry; it is written in a delta
    # (its index and rows empty), and every file of gen1 is linked.
    assert same == set(before) - {"manifest.json"}
    assert {"index/codes.u8", "index/mih_rows.i32", "features.npy", "feature_ids.npy", "entries.sqlite"} <= same
    written = set(files(gen2)) - same - {"manifest.json"}
    assert "entries.000002.sqlite" in written and sum(os.stat(gen2 / rel).st_size for rel in written) < 64 << 10
    back = Collection.open(path)
    got = results(back, Q)
    assert got[:4] == ids_before and all(p.startswith(str(moved)) for _, _, p in got[4])
    hit = int(got[0][0][0])
    assert back.read_image(hit) == Path(back.entries([hit])[0]["path"]).read_bytes()
    # The next add is a delta of its own: every file of gen2 but its manifest stays shared.
    at2 = {rel: os.stat(gen2 / rel).st_ino for rel in files(gen2)}
    back.add(X[N_FIRST:], keys[N_FIRST:], labels[N_FIRST:], root=moved)
    gen3 = back.save(path)
    same = {rel for rel in files(gen3) if os.stat(gen3 / rel).st_ino == at2.get(rel)}
    assert same == set(at2) - {"manifest.json"}
    assert len(Collection.open(path)) == len(X)


def test_a_save_without_changes_shares_every_file_and_deleting_the_old_one_keeps_it(real, tmp_path):
    _, _, _, _, _, Q = real
    path = tmp_path / "c.hsx"
    gen1 = saved(real, path)
    coll = Collection.open(path)
    expected = results(coll, Q)
    # Two names for every file, while both generations exist: a save that stops before its cleanup.
    inodes = {rel: os.stat(gen1 / rel).st_ino for rel in files(gen1)}
    gen2 = coll.save(path)
    assert {rel: os.stat(gen2 / rel).st_ino for rel in files(gen2) if rel != "manifest.json"} == {
        rel: ino for rel, ino in inodes.items() if rel != "manifest.json"
    }
    assert not gen1.exists()  # removed by the save: the data lives on under gen2's names
    back = Collection.open(path)  # every checksum
    assert results(back, Q) == expected
    back.add(Q[:3], ["q0.jpg", "q1.jpg", "q2.jpg"], root=tmp_path)
    back.save(path)
    assert len(Collection.open(path)) == N_FIRST + 3


def test_a_memory_mapped_index_added_to_does_not_change_the_old_generation(real, tmp_path):
    """Open (index, tables and rows memory-mapped read-only), search, remove, add, search, save:
    every byte of the generation it was opened from is as before, through every save after it."""
    _, folder, keys, labels, X, Q = real
    path = tmp_path / "c.hsx"
    gen1 = saved(real, path, "mih")
    old = keep_links(gen1, tmp_path / "keep")
    coll = Collection.open(path)
    index = coll.index
    assert isinstance(index._codes, np.memmap) and not index._codes.flags.writeable
    assert isinstance(index._rows_tab, np.memmap) and not index._rows_tab.flags.writeable
    assert isinstance(coll._features, np.memmap) and not coll._features.flags.writeable
    coll.search(Q, k=5)
    coll.remove([1, 2])
    coll.add(X[N_FIRST:], keys[N_FIRST:], labels[N_FIRST:], root=folder)
    coll.search(Q, k=5, rerank=20)
    gen2 = coll.save(path)
    coll.add(Q[:2], ["a.jpg", "b.jpg"], root=tmp_path)
    coll.search(Q, k=5)
    coll.save(path)
    assert {rel: file_sha256(tmp_path / "keep" / rel) for rel in old} == old
    assert not gen2.exists() and len(Collection.open(path)) == len(X) - 2 + 2


def test_a_refused_link_becomes_a_copy(real, tmp_path, monkeypatch, caplog):
    """On a file system without hard links (EXDEV, EPERM...) the unchanged files are copied, the
    debug log says so, and the collection is the same."""
    _, _, _, _, _, Q = real
    path = tmp_path / "c.hsx"
    gen1 = saved(real, path)
    coll = Collection.open(path)
    expected = results(coll, Q)
    inodes = {rel: os.stat(gen1 / rel).st_ino for rel in files(gen1)}
    digests = dict(coll.manifest["files"])

    def no_links(src, dst, *a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with caplog.at_level(logging.DEBUG, logger="hashsearch"):
        gen2 = coll.save(path)
    monkeypatch.undo()
    assert not {os.stat(gen2 / rel).st_ino for rel in files(gen2)} & set(inodes.values())
    assert any("refused a hard link" in r.getMessage() and "copying it" in r.getMessage() for r in caplog.records)
    back = Collection.open(path)
    assert results(back, Q) == expected
    assert back.manifest["files"] == digests  # the copies checked against the recorded sha256 on open


# -- what a save writes ----------------------------------------------------------------


def _io() -> tuple[int, int]:
    """(bytes written, bytes read) by this process so far (Linux /proc/self/io): written, the
    "write_bytes" the kernel counts as pages are dirtied, memory-mapped writes (mih's tables)
    included; read, "rchar", what read() calls returned (checksums, copies, SQLite's backup)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["rchar"])


def _measured_save(coll: Collection, path: Path) -> tuple[Path, int, int]:
    os.sync()  # earlier writes are not counted against this save
    w0, r0 = _io()
    gen = coll.save(path)
    w1, r1 = _io()
    return gen, w1 - w0, r1 - r0


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize(
    "index, store, with_model", [("flat", "full", False), ("mih", "pca-128", False), ("mih", "pca-128", True)]
)
def test_bytes_written_by_a_save_after_a_one_percent_add_and_remove(tmp_path, index, store, with_model):
    """5,000 synthetic entries (1280-d features, 64-bit ITQ codes), then 50 more (1%), then 50
    removed (1%): the bytes each save writes and reads, measured by the kernel's counters
    (/proc/self/io), against a save of the same collection into a new folder (which writes every
    file, as every save did before links and segments), with what each file of the new generation
    is. Run with -s to see the table."""
    n, d, added = 5000, 1280, 50
    g = np.random.default_rng(0)
    X = (g.normal(size=(n + added, d)) + g.normal(0, 3, (10, d))[g.integers(0, 10, n + added)]).astype(np.float32)
    hasher = create_hasher("itq", n_bits=64, n_iter=10, seed=0).fit(X[:n])
    model = None
    if with_model:
        model = TrainedModel.from_trained(create_backbone("efficientnet-lite0"), hasher, {"note": "bytes"})
    backbone = create_backbone("efficientnet-lite0")
    coll = Collection.create(backbone, hasher, index=index, rerank_store=store, model=model)
    keys = [f"img/{i:05d}.jpg" for i in range(n + added)]
    coll.add(X[:n], keys[:n], root=tmp_path)
    path = tmp_path / "c.hsx"
    gen = coll.save(path)
    mib = 1 << 20
    print(f"\n{index}, re-rank store {store}{', trained model file' if with_model else ''}: {n} entries")

    def change(c, what):
        if what == "add":
            c.add(X[n:], keys[n:], root=tmp_path)
        else:
            c.remove(np.arange(1000, 1000 + added))

    for step, what in enumerate(["add", "remove"]):
        # Two openings given the same change: one saved into a new folder, one into its own.
        elsewhere, coll = Collection.open(path, verify=False), Collection.open(path, verify=False)
        for c in (elsewhere, coll):
            change(c, what)
        _, before_w, before_r = _measured_save(elsewhere, tmp_path / f"elsewhere{step}.hsx")  # writes every file
        inodes = {rel: os.stat(gen / rel).st_ino for rel in files(gen)}
        gen, after_w, after_r = _measured_save(coll, path)
        sizes = {rel: os.stat(gen / rel).st_size for rel in files(gen)}
        linked = {rel for rel in sizes if os.stat(gen / rel).st_ino == inodes.get(rel)}
        total, shared = sum(sizes.values()), sum(sizes[rel] for rel in linked)
        print(
            f"  save after the {what} of {added} entries ({added / n:.0%}); generation {total / mib:.2f} MiB\n"
            f"    into a new folder (every file written): {before_w / mib:.2f} MiB written, {before_r / mib:.2f} MiB read\n"
            f"    into its own (unchanged files linked, the change a delta): {after_w / mib:.2f} MiB written, "
            f"{after_r / mib:.2f} MiB read; {shared / mib:.2f} MiB shared with the previous generation"
        )
        for rel in sorted(sizes, key=lambda r: -sizes[r]):
            print(f"      {rel:<30} {sizes[rel]:>12,} bytes  {'linked' if rel in linked else 'written'}")
        # Every file of the previous generation is linked but its manifest; the rest is the delta.
        assert linked == set(inodes) - {"manifest.json"}
        delta = f"{step + 2:06d}"
        assert {rel for rel in sizes if rel not in linked} == {"manifest.json"} | {
            rel for rel in sizes if rel.startswith(f"index.{delta}/") or f".{delta}." in rel
        }
        # What a save writes is the delta and the small files it writes and compares (hasher,
        # store): beside those, under a tenth of this small generation (the delta's SQLite pages
        # and mih-free flat segment do not grow with the collection: benchmarks/scale_collection.py
        # measures 10^6 and more), and a small part of what writing it all costs. What it reads
        # (the small files compared, and a first save's one-time reads in a process, about 18 MiB
        # here, whatever the collection's size) is less than the full write's.
        small = sum(sizes[rel] for rel in linked if rel in ("hasher.npz", RERANK_STORE_FILE))
        assert after_w - small <= 0.1 * total
        assert after_w - small <= 0.2 * (before_w - small)
        assert after_r < before_r
        assert results_equal(Collection.open(path), Collection.open(tmp_path / f"elsewhere{step}.hsx"), X[:20])


def back_manifest_deltas(path: Path) -> list[str]:
    return Collection.open(path, verify=False).manifest.get("deltas", [])


def results_equal(a: Collection, b: Collection, Q: np.ndarray) -> bool:
    ra, rb = a.search(Q, k=10, rerank=50), b.search(Q, k=10, rerank=50)
    return np.array_equal(ra.ids, rb.ids) and np.array_equal(ra.distances, rb.distances)


def test_share_file_links_copies_or_declines(tmp_path, monkeypatch):
    """share_file links the recorded file, declines one replaced since it was recorded (the caller
    writes it then), and copies where links are refused across devices."""
    from hashsearch.fileio import file_identity, share_file

    src = tmp_path / "a.bin"
    src.write_bytes(b"generation data" * 100)
    recorded = file_identity(src)
    assert share_file(src, tmp_path / "b.bin", recorded) == "linked"
    assert os.stat(tmp_path / "b.bin").st_ino == recorded[1]
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"other data")
    os.replace(replacement, src)  # another file now holds the name
    assert share_file(src, tmp_path / "c.bin", recorded) is None and not (tmp_path / "c.bin").exists()

    def cross_device(*a, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    assert share_file(tmp_path / "b.bin", tmp_path / "d.bin", file_identity(tmp_path / "b.bin")) == "copied"
    assert (tmp_path / "d.bin").read_bytes() == b"generation data" * 100
