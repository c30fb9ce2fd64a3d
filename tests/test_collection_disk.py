"""A collection on disk as real folders and real crashes leave it: any file name, any working
directory, a moved image folder, a process killed at every step of a save, a save that fails,
file handles, and the header check every saved file goes through."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.collection import NO_LABEL, Collection, CollectionError
from hashsearch.hashing import Hasher, create_hasher
from hashsearch.index.flat import FlatIndex

D = 16


@pytest.fixture(scope="module")
def hasher():
    X = np.random.default_rng(0).normal(size=(200, D)).astype(np.float32)
    return create_hasher("itq", n_bits=16, seed=0).fit(X)


def features(n, seed=1):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def new_collection(hasher):
    return Collection.create(create_backbone("efficientnet-lite0"), hasher)


def snapshot(coll, X):
    """What a user can observe of a collection: size, records and search results."""
    ids = sorted(int(i) for i in coll.index.ids)
    res = coll.search(X, k=5)
    return (
        len(coll),
        [(e["key"], e["label"], e["path"]) for e in coll.entries(ids)],
        res.ids.tolist(),
        coll.info()["labels"],
    )


# -- names and places ------------------------------------------------------------------


def test_any_file_name_round_trips_exactly(tmp_path, hasher):
    """Latin-1 bytes in a file name and a folder name (as old Windows and Samba shares write them),
    and in the collection's own folder: stored, given back and read exactly."""
    photos = tmp_path / "photos"
    (photos / os.fsdecode(b"cr\xe8me")).mkdir(parents=True)
    names = [b"caf\xe9.jpg", "snow ☃ / ü.jpg".replace("/", "_").encode(), b"a?b#c%20.jpg"]
    keys = []
    for i, raw in enumerate(names):
        path = os.fsencode(photos / os.fsdecode(b"cr\xe8me")) + b"/" + raw
        with open(path, "wb") as f:
            f.write(b"image %d" % i)
        keys.append(os.fsdecode(path))
    coll = new_collection(hasher)
    coll.add(features(3), keys, [os.fsdecode(b"cr\xe8me")] * 3, ["d0", "d1", "d2"], root=photos)
    where = tmp_path / os.fsdecode(b"coll\xe9ctions") / "p.hsx"
    coll.save(where)
    back = Collection.open(where)
    got = back.entries([0, 1, 2])
    assert [os.fsencode(e["key"]) for e in got] == [b"cr\xe8me/" + n for n in names]
    assert [os.fsencode(e["path"]) for e in got] == [os.fsencode(k) for k in keys]
    assert {os.fsencode(e["label"]) for e in got} == {b"cr\xe8me"}
    assert [back.read_image(i) for i in range(3)] == [b"image 0", b"image 1", b"image 2"]
    assert os.fsencode(next(iter(back.info()["labels"]))) == b"cr\xe8me"


def test_files_resolve_from_any_working_directory(tmp_path, hasher, monkeypatch):
    """`cd /data && index ./photos --out /srv/p.hsx`, then open it from elsewhere."""
    data = tmp_path / "data"
    (data / "photos" / "cat").mkdir(parents=True)
    (data / "photos" / "cat" / "1.jpg").write_bytes(b"one")
    monkeypatch.chdir(data)
    coll = new_collection(hasher)
    coll.add(features(1), ["photos/cat/1.jpg"], ["cat"], root="photos")
    coll.save(tmp_path / "srv" / "p.hsx")
    monkeypatch.chdir(tmp_path / "srv")
    back = Collection.open("p.hsx")
    e = back.entries([0])[0]
    assert e["key"] == "cat/1.jpg" and e["path"] == str(data / "photos" / "cat" / "1.jpg")
    assert back.read_image(0) == b"one"


def test_a_moved_folder_is_repaired_by_relocate(tmp_path, hasher):
    old = tmp_path / "old" / "photos"
    (old / "cat").mkdir(parents=True)
    (old / "cat" / "1.jpg").write_bytes(b"one")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "2.jpg").write_bytes(b"two")
    coll = new_collection(hasher)
    coll.add(features(1), [str(old / "cat" / "1.jpg")], root=old)
    coll.add(features(1, 2), [str(other / "2.jpg")], root=other)
    coll.save(tmp_path / "p.hsx")
    shutil.move(old, tmp_path / "photos")
    coll = Collection.open(tmp_path / "p.hsx")
    assert [s["exists"] for s in coll.sources()] == [False, True]
    with pytest.raises(OSError, match="cat/1.jpg.*relocate"):
        coll.read_image(0)
    assert coll.relocate(tmp_path / "old", tmp_path) == 1
    coll.save(tmp_path / "p.hsx")
    back = Collection.open(tmp_path / "p.hsx")
    assert back.read_image(0) == b"one" and back.read_image(1) == b"two"
    assert back.sources() == [
        {"root": str(tmp_path / "photos"), "count": 1, "exists": True},
        {"root": str(other), "count": 1, "exists": True},
    ]


def test_uploads_move_with_the_collection(tmp_path, hasher):
    coll = new_collection(hasher)
    coll.save(tmp_path / "a.hsx")
    coll.uploads_dir.mkdir()
    (coll.uploads_dir / "x.png").write_bytes(b"upload")
    coll.add(features(1), [str(coll.uploads_dir / "x.png")], root=coll.uploads_dir)
    coll.save(tmp_path / "a.hsx")
    shutil.move(tmp_path / "a.hsx", tmp_path / "b.hsx")
    back = Collection.open(tmp_path / "b.hsx")
    assert back.entries([0])[0]["key"] == "x.png" and back.read_image(0) == b"upload"
    assert back.sources()[0]["root"] == str(tmp_path / "b.hsx" / "uploads")


def test_duplicates_by_content_and_dirty(tmp_path, hasher):
    coll = new_collection(hasher)
    coll.add(features(3), ["a.jpg", "b.jpg", "c.jpg"], digests=["x", "y", "x"])
    assert coll.ids_by_digest(["x", "y", "z"]) == {"x": 0, "y": 1}
    coll.save(tmp_path / "p.hsx")
    assert not coll.dirty
    assert coll.remove([0, 999]) == 1 and coll.dirty
    assert coll.ids_by_digest(["x"]) == {"x": 2}
    coll.save(tmp_path / "p.hsx")
    gens = sorted(p.name for p in (tmp_path / "p.hsx").glob("gen-*"))
    assert coll.remove([999, 12345]) == 0 and not coll.dirty  # nothing to save: callers skip save()
    assert Collection.open(tmp_path / "p.hsx").ids_by_digest(["x", "y"]) == {"x": 2, "y": 1}
    assert sorted(p.name for p in (tmp_path / "p.hsx").glob("gen-*")) == gens


def test_unlabelled_entries_are_named_in_info(hasher):
    coll = new_collection(hasher)
    coll.add(features(3), ["a.jpg", "b.jpg", "c.jpg"], ["cat", None, None])
    assert coll.info()["labels"] == {NO_LABEL: 2, "cat": 1}


# -- crashes ---------------------------------------------------------------------------

# Every call through which a save touches the disk; a kill lands before each of them in turn.
_STEPS = [
    (os, "replace"),
    (os, "rename"),
    (os, "link"),
    (os, "fsync"),
    (os, "open"),
    (os, "mkdir"),
    (os, "unlink"),
    (os, "rmdir"),
    (builtins, "open"),
    (io, "open"),
    (shutil, "copyfile"),
]


def _die_at(step: int) -> None:
    """Patch every disk call to count itself, and end the process (no cleanup) at call `step`."""
    count = [0]
    for module, name in _STEPS:
        real = getattr(module, name)

        def wrapped(*a, _real=real, **kw):
            count[0] += 1
            if count[0] == step:
                os._exit(137)
            return _real(*a, **kw)

        setattr(module, name, wrapped)


@pytest.mark.slow  # 12-15 s each: make test-distributed
@pytest.mark.parametrize("change", ["add and remove", "relocate", "delta"])
def test_a_kill_at_every_step_of_a_save_leaves_a_working_collection(tmp_path, hasher, change):
    """Fork a child that saves a pending change and is killed before its N-th disk call, for every
    N until a save completes; after each, the collection opens (all checksums), holds the old or
    the new state, searches, and takes the next save. A relocate changes the entries alone: that
    save hard-links the index and features from the live generation (os.link is one of the steps).
    "add and remove" changes a third of the collection: the save merges it into one base
    (compaction); "delta" (2 added, 1 removed, onto a collection that has a delta already) writes
    a new delta and links the base and the older delta."""
    X = features(40)
    pristine = tmp_path / "pristine.hsx"
    coll = new_collection(hasher)
    coll.add(X[:30], [f"{i}.jpg" for i in range(30)], ["a"] * 30, root=".")
    coll.save(pristine)
    if change == "delta":
        coll.add(X[36:37], ["36.jpg"], ["c"], root=".")
        coll.save(pristine)
        assert Collection.open(pristine).manifest["deltas"] == ["000002"]
    base = Collection.open(pristine)
    old = snapshot(base, X)

    def pending(coll):
        if change == "relocate":
            assert coll.relocate(".", tmp_path / "elsewhere") == 30
        elif change == "delta":
            coll.add(X[30:32], ["30.jpg", "31.jpg"], ["b"] * 2, root=".")
            coll.remove([3])
        else:
            coll.add(X[30:], [f"{i}.jpg" for i in range(30, 40)], ["b"] * 10, root=".")
            coll.remove([3])

    pending(base)
    work = tmp_path / "work.hsx"
    outcomes = []
    for step in range(1, 500):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        coll = Collection.open(work)
        pending(coll)
        new = snapshot(coll, X)
        assert new != old
        pid = os.fork()
        if pid == 0:  # the child: save, and die at the chosen step
            try:
                _die_at(step)
                coll.save(work)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 137)
        coll.close()  # the parent's copy held the old generation: a save leaves a held one in place
        back = Collection.open(work)
        got = snapshot(back, X)
        assert got in (old, new), f"killed at step {step}: neither the old nor the new state"
        outcomes.append(got == new)
        back.add(X[:1], ["again.jpg"], root=".")
        back.save(work)
        again = Collection.open(work)
        assert len(again) == got[0] + 1 and again.entries([int(again.index.ids.max())])[0]["key"] == "again.jpg"
        assert len(list(work.glob("gen-*"))) == 1 and not list(work.glob(".*tmp*"))
        if code == 0:
            break
    else:
        pytest.fail("the save never completed")
    assert step > 20, "too few steps counted: the patch did not see the save's disk calls"
    # Old state up to the switch of CURRENT, the new one after it; both were seen.
    assert outcomes[0] is False and outcomes[-1] is True
    assert outcomes == sorted(outcomes)
    if change == "delta":
        assert Collection.open(work).manifest["deltas"][:2] == ["000002", "000003"]  # then the "again" save's
    if change == "relocate":  # the save that completed linked the index rather than writing it
        coll = Collection.open(pristine)
        inode = os.stat(pristine / (pristine / "CURRENT").read_text().strip() / "index" / "codes.u8").st_ino
        pending(coll)
        assert os.stat(coll.save(pristine) / "index" / "codes.u8").st_ino == inode


def test_a_leftover_generation_does_not_wedge_the_collection(tmp_path, hasher):
    """The issue's reproduction: a copy of the live gen-N as gen-N+1 (a save killed after its
    rename, before CURRENT), then an add: the save must succeed."""
    coll = new_collection(hasher)
    coll.add(features(5), [f"{i}.jpg" for i in range(5)], root=".")
    gen = coll.save(tmp_path / "p.hsx")
    shutil.copytree(gen, gen.with_name("gen-000002"))
    coll = Collection.open(tmp_path / "p.hsx")
    coll.add(features(1, 7), ["new.jpg"], root=".")
    live = coll.save(tmp_path / "p.hsx")
    assert live.name == "gen-000003" and len(Collection.open(tmp_path / "p.hsx")) == 6
    assert [p.name for p in (tmp_path / "p.hsx").glob("gen-*")] == ["gen-000003"]


@pytest.mark.filterwarnings("ignore:.*the new generation is live")
def test_a_failed_save_leaves_memory_equal_to_disk(tmp_path, hasher, monkeypatch):
    """Make the k-th disk call of a save fail, for every k: the save raises CollectionError, the
    object then equals what is on disk (no phantom add or remove), and the next save works."""
    X = features(20)
    path = tmp_path / "p.hsx"
    coll = new_collection(hasher)
    coll.add(X[:10], [f"{i}.jpg" for i in range(10)], root=".")
    coll.save(path)
    for k in range(1, 200):
        coll = Collection.open(path)
        on_disk = snapshot(coll, X)
        coll.add(X[10:12], ["x.jpg", "y.jpg"], root=".")
        coll.remove([0])
        count = [0]
        real = {"replace": os.replace, "fsync": os.fsync}

        def failing(name):
            def call(*a, **kw):
                count[0] += 1
                if count[0] == k:
                    raise OSError(28, "No space left on device")
                return real[name](*a, **kw)

            return call

        for name in real:
            monkeypatch.setattr(os, name, failing(name))
        files_before = sorted(os.listdir(path))
        try:
            coll.save(path)
        except CollectionError as e:
            assert "No space left on device" in str(e) and "nothing changed on disk" in str(e)
            assert sorted(os.listdir(path)) == files_before
            assert snapshot(coll, X) == on_disk == snapshot(Collection.open(path), X)
            monkeypatch.undo()
            coll.add(X[12:13], ["z.jpg"], root=".")
            coll.save(path)
            assert len(Collection.open(path)) == on_disk[0] + 1
        else:
            monkeypatch.undo()
            assert snapshot(Collection.open(path), X) == snapshot(coll, X)
            break
    assert k > 10


def _in_another_process(fn) -> None:
    """Run `fn()` in a forked child (a real other process: its own file locks); fail if it fails."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_save_in_another_process_leaves_the_generation_a_reader_holds(tmp_path, hasher):
    """Session 6, finding 1: `hashsearch add` deleted the generation a running server read, and every
    read of its records failed. A generation an open collection holds stays until it lets go."""
    path = tmp_path / "p.hsx"
    coll = new_collection(hasher)
    coll.add(features(6), [f"{i}.jpg" for i in range(6)], ["a"] * 6, [f"d{i}" for i in range(6)], root=".")
    coll.save(path)
    coll.close()  # holds what it saved, as an opened one does; let go of here
    reader = Collection.open(path)
    X = features(3, seed=5)
    before = snapshot(reader, X)

    def add_one():
        writer = Collection.open(path)
        writer.add(features(1, seed=9), ["new.jpg"], ["b"], ["dn"], root=".")
        writer.save(path)

    _in_another_process(add_one)
    assert Collection.live_generation(path) != reader.generation and (path / reader.generation).is_dir()
    assert snapshot(reader, X) == before  # records, search, labels: all still read, as they were
    assert reader.ids_by_digest(["d3"]) == {"d3": 3} and reader.features_of(np.array([2])).shape == (1, D)
    fresh = Collection.open(path)
    assert len(fresh) == 7 and fresh.generation == Collection.live_generation(path)
    reader.close()
    fresh.remove([0])
    fresh.save(path)
    assert [p.name for p in path.glob("gen-*")] == [fresh.generation]  # let go of: deleted by the next save


def test_old_generations_are_removed_once_let_go_and_never_during_a_save(tmp_path, hasher):
    """`remove_old_generations` (what a server calls after following another process's save):
    a held generation stays; a let-go one goes; nothing goes while a save holds the folder."""
    import fcntl

    path = tmp_path / "p.hsx"
    coll = new_collection(hasher)
    coll.add(features(3), ["a.jpg", "b.jpg", "c.jpg"], root=".")
    coll.save(path)
    reader = Collection.open(path)
    coll.remove([0])
    coll.save(path)
    assert sorted(p.name for p in path.glob("gen-*")) == ["gen-000001", "gen-000002"]
    assert Collection.remove_old_generations(path) == 0  # the reader still reads gen-000001
    reader.close()
    fd = os.open(path, os.O_RDONLY)  # the lock a running save holds on the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert Collection.remove_old_generations(path) == 0 and (path / "gen-000001").is_dir()
    finally:
        os.close(fd)
    assert Collection.remove_old_generations(path) == 1
    assert [p.name for p in path.glob("gen-*")] == ["gen-000002"] and len(Collection.open(path)) == 2


def test_a_save_over_another_processs_save_is_refused(tmp_path, hasher):
    """Two processes that opened the same generation: the second to save would silently drop the
    first's change; it is refused, nothing is written, and the object is reset to the saved state."""
    path = tmp_path / "p.hsx"
    coll = new_collection(hasher)
    coll.add(features(4), [f"{i}.jpg" for i in range(4)], root=".")
    coll.save(path)
    late = Collection.open(path)

    def add_one():
        writer = Collection.open(path)
        writer.add(features(1, seed=9), ["theirs.jpg"], root=".")
        writer.save(path)

    _in_another_process(add_one)
    late.add(features(1, seed=8), ["mine.jpg"], root=".")
    with pytest.raises(CollectionError, match="another process saved gen-000002 since this collection read gen-000001"):
        late.save(path)
    on_disk = Collection.open(path)
    assert [e["key"] for e in on_disk.entries([4])] == ["theirs.jpg"] and len(on_disk) == 5
    assert len(late) == 5  # reset to what is on disk: the change can be made again
    late.add(features(1, seed=8), ["mine.jpg"], root=".")
    late.save(path)
    assert sorted(e["key"] for e in Collection.open(path).entries([4, 5])) == ["mine.jpg", "theirs.jpg"]


def test_no_sqlite_handle_stays_open(tmp_path, hasher):
    """A long-running server reads and saves many times: no handle to any entries database stays."""
    coll = new_collection(hasher)
    coll.add(features(5), [f"{i}.jpg" for i in range(5)], ["a"] * 5, ["d"] * 5, root=".")
    path = tmp_path / "p.hsx"
    for i in range(5):
        coll.save(path)
        coll.entries([0, 1])
        coll.info()
        coll.ids_by_digest(["d"])
        coll.remove([i])
    coll = Collection.open(path)
    coll.entries([4])
    fds = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    assert not [f for f in fds if "entries.sqlite" in f]


# -- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["format", "version"])
def test_an_index_file_without_its_header_is_refused(tmp_path, drop):
    """The flat index read its own header leniently; every back end now goes through one check."""
    from hashsearch.types import Codes

    idx = FlatIndex(16)
    idx.add(Codes(np.zeros((3, 2), np.uint8), 16))
    idx.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    del meta[drop]
    (tmp_path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"index.json has format .* this hashsearch reads 'hashsearch-flat-index' version 1"
    ):
        FlatIndex.load(tmp_path)


def test_a_hasher_file_of_another_version_is_refused(tmp_path, hasher):
    hasher.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz") as z:
        arrays = dict(z)
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta["version"] = 0
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "h.npz", **arrays)
    with pytest.raises(ValueError, match="version 0"):
        Hasher.load(tmp_path / "h.npz")


def test_a_version_1_collection_says_to_rebuild(tmp_path, hasher):
    coll = new_collection(hasher)
    coll.add(features(2), ["a.jpg", "b.jpg"], root=".")
    gen = coll.save(tmp_path / "p.hsx")
    m = json.loads((gen / "manifest.json").read_text())
    m["version"] = 1
    (gen / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CollectionError, match="version 1.*rebuild"):
        Collection.open(tmp_path / "p.hsx", verify=False)


def test_a_save_that_cannot_switch_leaves_nothing_behind(tmp_path, hasher):
    """A folder standing where CURRENT goes: the save fails at its last step, and neither the new
    generation nor the pointer's temporary file stays; a new collection's folder goes too."""
    coll = new_collection(hasher)
    coll.add(features(2), ["a.jpg", "b.jpg"], root=".")
    (tmp_path / "p.hsx" / "CURRENT").mkdir(parents=True)
    with pytest.raises(CollectionError, match="nothing changed on disk"):
        coll.save(tmp_path / "p.hsx")
    assert os.listdir(tmp_path / "p.hsx") == ["CURRENT"]
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "x.hsx").write_text("a file where a folder goes")
    with pytest.raises(CollectionError, match="nothing changed on disk"):
        coll.save(tmp_path / "ro" / "x.hsx" / "sub.hsx")
    assert os.listdir(tmp_path / "ro") == ["x.hsx"]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        with pytest.raises(CollectionError, match="Input/output error"):
            coll.save(tmp_path / "new.hsx")
    assert not (tmp_path / "new.hsx").exists()
    coll.save(tmp_path / "new.hsx")
    assert len(Collection.open(tmp_path / "new.hsx")) == 2


def test_one_moved_folder_of_a_source_is_relocated(tmp_path, hasher):
    """Only photos/daisy moved: its entries follow it, the others stay; counts, labels and the
    files read agree before and after the save."""
    photos = tmp_path / "photos"
    for cls in ("daisy", "iris"):
        (photos / cls).mkdir(parents=True)
        for i in range(3):
            (photos / cls / f"{i}.jpg").write_bytes(f"{cls} {i}".encode())
    coll = new_collection(hasher)
    keys = [str(photos / cls / f"{i}.jpg") for cls in ("daisy", "iris") for i in range(3)]
    coll.add(features(6), keys, ["daisy"] * 3 + ["iris"] * 3, root=photos)
    coll.save(tmp_path / "p.hsx")
    shutil.move(photos / "daisy", tmp_path / "daisy2")
    coll = Collection.open(tmp_path / "p.hsx")
    assert coll.relocate(photos / "daisy", tmp_path / "daisy2") == 3
    for c in (coll, None):
        c = c or Collection.open(tmp_path / "p.hsx")
        assert [c.read_image(i) for i in range(6)] == [
            f"{cls} {i}".encode() for cls in ("daisy", "iris") for i in range(3)
        ]
        assert [e["key"] for e in c.entries(range(6))] == [
            "0.jpg",
            "1.jpg",
            "2.jpg",
            "iris/0.jpg",
            "iris/1.jpg",
            "iris/2.jpg",
        ]
        assert c.info()["labels"] == {"daisy": 3, "iris": 3}
        assert sorted((s["root"], s["count"], s["exists"]) for s in c.sources()) == sorted(
            [(str(photos), 3, True), (str(tmp_path / "daisy2"), 3, True)]
        )
        if c is coll:
            coll.save(tmp_path / "p.hsx")


def test_the_unlabelled_entries_are_found_by_the_name_info_gives_them(hasher):
    coll = new_collection(hasher)
    X = features(6)
    coll.add(X, [f"{i}.jpg" for i in range(6)], ["a", None, "b", None, None, "a"], root=".")
    assert coll.info()["labels"][NO_LABEL] == 3
    hits = coll.search_records(X[:1], k=6, label=NO_LABEL)[0]
    assert sorted(h["id"] for h in hits) == [1, 3, 4] and {h["label"] for h in hits} == {None}
