"""Sources on folders as users have them (issue 18): names that are not UTF-8, labels with a
stray image, nested and split trees, labels files, and every file that is not listed accounted for."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from hashsearch.data.sources import (
    FolderSource,
    ImageRecord,
    ListSource,
    TarSource,
    escape_name,
    open_source,
    printable,
    read_key,
    unescape_name,
)

CAFE = b"caf\xe9.jpg"  # Latin-1, as old Windows and Samba shares write it: not valid UTF-8


@pytest.fixture(scope="module")
def jpegs(cifar_small) -> list[bytes]:
    """Six different real CIFAR-10 JPEGs."""
    return [p.read_bytes() for p in sorted((cifar_small / "test").rglob("*.jpg"))[:6]]


def write(path: bytes | Path, data: bytes) -> None:
    """Write a file whose path may hold any bytes (made with the bytes API, as a share would)."""
    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# -- names that are not UTF-8 -------------------------------------------------------------------


def test_folder_keys_keep_the_bytes_of_names_that_are_not_utf8(tmp_path, jpegs):
    root = os.fsencode(tmp_path / "photos")
    write(os.path.join(root, b"ch\xe2teau", CAFE), jpegs[0])  # a class folder in Latin-1 too
    write(os.path.join(root, b"ch\xe2teau", b"ok.jpg"), jpegs[1])
    src = FolderSource(tmp_path / "photos")
    recs = src.records()
    keys = {os.fsencode(r.key): r for r in recs}
    want = os.path.join(root, b"ch\xe2teau", CAFE)
    assert want in keys and keys[want].label == os.fsdecode(b"ch\xe2teau")  # the exact bytes, both
    assert dict((os.fsencode(r.key), d) for r, d, e in src.iter_bytes(recs))[want] == jpegs[0]
    assert read_key(keys[want].key) == jpegs[0]
    assert printable(keys[want].key).endswith("ch\\xe2teau/caf\\xe9.jpg")


def test_archive_members_keep_the_bytes_of_names_that_are_not_utf8(tmp_path, jpegs):
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"photos-{fmt}.tar.gz"
        with tarfile.open(path, "w:gz", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
            for name, data in ((os.fsdecode(b"cat/" + CAFE), jpegs[0]), ("cat/b.jpg", jpegs[1])):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        src = TarSource(path)
        recs = src.records()
        member = [r for r in recs if os.fsencode(r.key).endswith(b"::cat/" + CAFE)]
        assert len(member) == 1 and member[0].label == "cat", [r.key for r in recs]
        assert [d for r, d, e in src.iter_bytes(member)] == [jpegs[0]]
        assert read_key(member[0].key) == jpegs[0]


def test_a_list_file_in_latin1_names_its_files_exactly(tmp_path, jpegs):
    write(os.path.join(os.fsencode(tmp_path), b"imgs", CAFE), jpegs[0])
    write(tmp_path / "imgs" / "b.jpg", jpegs[1])
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"imgs/" + CAFE + b"\tcaf\xe9\r\nimgs/b.jpg\tdog\r\n")  # Latin-1, Windows line ends
    recs = ListSource(lst).records()
    assert [os.fsencode(r.key) for r in recs] == [
        os.fsencode(tmp_path / "imgs" / "b.jpg"),
        os.path.join(os.fsencode(tmp_path), b"imgs", CAFE),
    ]
    assert recs[1].label == os.fsdecode(b"caf\xe9")
    assert [d for _, d, _ in ListSource(lst).iter_bytes()] == [jpegs[1], jpegs[0]]
    # UTF-16 with a BOM (Windows Notepad's "Unicode"): the names are text.
    write(tmp_path / "imgs" / "café.jpg", jpegs[2])
    lst.write_bytes("imgs/café.jpg\tcat\n".encode("utf-16"))
    assert [d for _, d, _ in ListSource(lst).iter_bytes()] == [jpegs[2]]
    # A UTF-8 BOM (Excel's CSV) is dropped.
    csv = tmp_path / "list.csv"
    csv.write_bytes(b"\xef\xbb\xbfpath,label\nimgs/b.jpg,dog\n")
    assert ListSource(csv).records() == [ImageRecord(str(tmp_path / "imgs" / "b.jpg"), "dog")]


@pytest.mark.parametrize(
    "name",
    [
        os.fsdecode(CAFE),
        "plain.jpg",
        "tab\there.jpg",
        "new\nline.jpg",
        "back\\slash.jpg",
        "snow ☃ 🐈.jpg",
        "bell\x07.jpg",
        os.fsdecode(b"\xff\xfe\\x41.jpg"),
    ],
)
def test_names_escape_reversibly_and_print_on_one_line(name):
    assert unescape_name(escape_name(name)) == name
    escaped = escape_name(name)
    assert "\t" not in escaped and "\n" not in escaped
    escaped.encode("utf-8")  # writable as UTF-8 text, whatever the name held
    shown = printable(name)
    assert shown.isprintable() and "\n" not in shown
    shown.encode("utf-8")
    assert printable(os.fsdecode(CAFE)) == "caf\\xe9.jpg"


# -- labels -------------------------------------------------------------------------------------


def test_a_stray_image_keeps_the_other_labels_and_is_named(tmp_path, jpegs):
    root = tmp_path / "photos"
    write(root / "cover.jpg", jpegs[0])
    write(root / "cat" / "a.jpg", jpegs[1])
    write(root / "dog" / "b.jpg", jpegs[2])
    src = open_source(root)
    assert [(Path(r.key).name, r.label) for r in src.records()] == [
        ("a.jpg", "cat"),
        ("cover.jpg", None),
        ("b.jpg", "dog"),
    ]
    labels = src.listing().labels
    assert labels.layout == "one folder per class" and labels.counts == {"cat": 1, "dog": 1}
    assert labels.unlabelled == [(str(root / "cover.jpg"), "directly in the source folder, not in a class folder")]
    assert labels.summary() == (
        f"labels: one folder per class; 2 classes (cat 1, dog 1); 1 image has no label: "
        f"{root / 'cover.jpg'} (directly in the source folder, not in a class folder)"
    )


def test_a_nested_tree_takes_the_class_folder(tmp_path, jpegs):
    root = tmp_path / "photos"
    write(root / "cat" / "2023" / "x.jpg", jpegs[0])
    write(root / "cat" / "2024" / "summer" / "y.jpg", jpegs[1])
    write(root / "dog" / "z.jpg", jpegs[2])
    labels = {Path(r.key).name: r.label for r in FolderSource(root).records()}
    assert labels == {"x.jpg": "cat", "y.jpg": "cat", "z.jpg": "dog"}
    assert "subfolder takes its class folder's name" in FolderSource(root).listing().labels.layout
    parent = {Path(r.key).name: r.label for r in FolderSource(root, labels="parent").records()}
    assert parent == {"x.jpg": "2023", "y.jpg": "summer", "z.jpg": "dog"}


def test_split_folders_are_stepped_over(tmp_path, jpegs):
    root = tmp_path / "data"
    write(root / "train" / "cat" / "a.jpg", jpegs[0])
    write(root / "test" / "dog" / "b.jpg", jpegs[1])
    write(root / "train" / "loose.jpg", jpegs[2])
    src = FolderSource(root)
    assert {Path(r.key).name: r.label for r in src.records()} == {"a.jpg": "cat", "b.jpg": "dog", "loose.jpg": None}
    report = src.listing().labels
    assert report.layout == "class folders under the split folders test/, train/"
    assert report.unlabelled[0][1] == "directly in the split folder train/, not in a class folder"
    # A class that happens to be called "train" beside others is a class (Pascal VOC has one).
    write(tmp_path / "vehicles" / "train" / "t.jpg", jpegs[3])
    write(tmp_path / "vehicles" / "bus" / "b.jpg", jpegs[4])
    assert {r.label for r in FolderSource(tmp_path / "vehicles").records()} == {"train", "bus"}


def test_a_flat_folder_has_no_labels_and_says_so(tmp_path, jpegs):
    write(tmp_path / "flat" / "a.jpg", jpegs[0])
    write(tmp_path / "flat" / "b.jpg", jpegs[1])
    src = FolderSource(tmp_path / "flat")
    assert {r.label for r in src.records()} == {None}
    assert src.listing().labels.summary() == "labels: none: no image is in a class folder below the source folder"
    none = FolderSource(tmp_path / "flat", labels="none")
    none.records()
    assert none.listing().labels.summary() == "labels: none (labels='none' was asked)"


def test_a_labels_file_labels_any_source(tmp_path, jpegs):
    root = tmp_path / "photos"
    write(root / "a.jpg", jpegs[0])
    write(root / "sub" / "b.jpg", jpegs[1])
    write(os.path.join(os.fsencode(root), CAFE), jpegs[2])
    labels = tmp_path / "labels.tsv"
    labels.write_bytes(b"a.jpg\tcat\n./sub/b.jpg\tdog\n" + CAFE + b"\tcat\nmissing.jpg\tcat\n")
    src = FolderSource(root, labels=labels)
    got = {os.fsencode(Path(r.key).name): r.label for r in src.records()}
    assert got == {b"a.jpg": "cat", b"b.jpg": "dog", CAFE: "cat"}
    assert src.listing().labels.unmatched == ["missing.jpg"]
    assert "1 name in the labels file matches no image: missing.jpg" in src.listing().labels.summary()
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "a.jpg", arcname="a.jpg")
        tar.add(root / "sub" / "b.jpg", arcname="sub/b.jpg")
    tar_src = TarSource(archive, labels=labels)
    assert [r.label for r in tar_src.records()] == ["cat", "dog"]
    labels.write_text("a.jpg\tcat\na.jpg\tdog\n")
    with pytest.raises(ValueError, match="'a.jpg' has label 'cat' on line 1 and 'dog' on line 2"):
        FolderSource(root, labels=labels).records()
    with pytest.raises(ValueError, match="or the path of a labels file"):
        FolderSource(root, labels=tmp_path / "nope.tsv")


def test_a_list_file_can_take_labels_from_folders(tmp_path, jpegs):
    write(tmp_path / "cat" / "2023" / "a.jpg", jpegs[0])
    write(tmp_path / "dog" / "b.jpg", jpegs[1])
    lst = tmp_path / "all.txt"
    lst.write_text("cat/2023/a.jpg\ndog/b.jpg\tpuppy\n")
    assert [r.label for r in ListSource(lst).records()] == [None, "puppy"]
    assert ListSource(lst).listing().labels.unlabelled[0][1] == "no label on line 1 of the list file"
    assert [r.label for r in ListSource(lst, labels="folder").records()] == ["cat", "dog"]
    assert [r.label for r in ListSource(lst, labels="parent").records()] == ["2023", "dog"]


# -- nothing vanishes ---------------------------------------------------------------------------


def test_every_file_of_a_folder_is_listed_or_accounted_for(tmp_path, jpegs):
    root = tmp_path / "photos"
    write(root / "cat" / "a.jpg", jpegs[0])
    write(root / "cat" / "IMG_0001.HEIC", b"")  # listed as an image (decoding says why it fails)
    write(root / "cat" / "clip.mov", b"movie")
    write(root / "README.txt", b"notes")
    write(root / ".DS_Store", b"\0")
    write(root / ".thumbs" / "a.jpg", jpegs[0])
    write(tmp_path / "elsewhere" / "e.jpg", jpegs[1])
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a folder link: not followed
    os.symlink(tmp_path / "gone.jpg", root / "cat" / "broken.jpg")
    os.mkfifo(root / "cat" / "pipe.jpg")  # reading it would block forever
    for a, b in (("loop1.jpg", "loop2.jpg"), ("loopa", "loopb")):  # links that lead to each other
        os.symlink(b, root / "cat" / a)
        os.symlink(a, root / "cat" / b)
    src = FolderSource(root)
    names = sorted(Path(r.key).name for r in src.records())
    assert names == ["IMG_0001.HEIC", "a.jpg", "broken.jpg"]
    listing = src.listing()
    assert sorted(Path(k).name for k in listing.not_images) == ["README.txt", "clip.mov"]
    assert listing.hidden == [str(root / ".DS_Store"), str(root / ".thumbs") + "/"]
    loop = "a symbolic link loop (the link leads back to itself): not followed"
    assert dict(listing.problems) == {
        str(root / "cat" / "pipe.jpg"): "not a regular file (a device, socket or pipe)",
        str(root / "linked"): "a symbolic link to a folder: not followed (give the folder itself)",
        **{str(root / "cat" / name): loop for name in ("loop1.jpg", "loop2.jpg", "loopa", "loopb")},
    }
    read = {Path(r.key).name: e for r, _, e in src.iter_bytes()}
    assert read["broken.jpg"] == "a broken symbolic link (its target does not exist)"
    # Everything under the folder is in exactly one of the lists.
    every = {str(p) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()} | {str(root / ".thumbs")}
    every -= {str(root / ".thumbs" / "a.jpg")}  # inside a hidden folder, counted with it
    accounted = (
        {r.key for r in src.records()}
        | set(listing.not_images)
        | {k.rstrip("/") for k in listing.hidden}
        | {k for k, _ in listing.problems}
    )
    assert accounted == every


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_subfolder_is_reported(tmp_path, jpegs):
    write(tmp_path / "photos" / "cat" / "a.jpg", jpegs[0])
    write(tmp_path / "photos" / "locked" / "b.jpg", jpegs[1])
    os.chmod(tmp_path / "photos" / "locked", 0)
    try:
        src = FolderSource(tmp_path / "photos")
        assert [Path(r.key).name for r in src.records()] == ["a.jpg"]
        assert src.listing().problems[0][1].startswith("cannot read the folder")
    finally:
        os.chmod(tmp_path / "photos" / "locked", 0o755)


def test_every_member_of_an_archive_is_listed_or_accounted_for(tmp_path, jpegs):
    path = tmp_path / "photos.tar"
    with tarfile.open(path, "w") as tar:

        def add(name, data=b"", kind=tarfile.REGTYPE, target=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, len(data)
            tar.addfile(info, io.BytesIO(data))

        add("cat/a.jpg", jpegs[0])
        add("cat/notes.txt", b"notes")
        add("__MACOSX/cat/._a.jpg", b"x")
        add("../escape.jpg", jpegs[1])
        add("cat/link.jpg", kind=tarfile.SYMTYPE, target="a.jpg")
    src = TarSource(path)
    assert [r.key for r in src.records()] == [f"{path}::cat/a.jpg"]
    listing = src.listing()
    assert listing.not_images == [f"{path}::cat/notes.txt"]
    assert listing.hidden == [f"{path}::__MACOSX/cat/._a.jpg"]
    assert dict(listing.problems) == {
        f"{path}::../escape.jpg": "an unsafe member name (it climbs out with ..): not read",
        f"{path}::cat/link.jpg": "a link inside the archive: not followed",
    }


def test_root_is_the_absolute_folder_keys_are_relative_to(tmp_path, jpegs, monkeypatch):
    write(tmp_path / "photos" / "cat" / "a.jpg", jpegs[0])
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("../photos/cat/a.jpg\n")
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(tmp_path / "photos", arcname="photos")
    monkeypatch.chdir(tmp_path)
    assert FolderSource("photos").root == str(tmp_path / "photos")
    assert TarSource("photos.tar").root == str(tmp_path)
    assert ListSource("lists/l.txt").root == str(tmp_path / "lists")
    os.symlink(tmp_path / "photos", tmp_path / "link")
    assert FolderSource("link").root == str(tmp_path / "link")  # links are not resolved


def test_a_list_naming_a_link_loop_says_so(tmp_path, jpegs):
    write(tmp_path / "a.jpg", jpegs[0])
    os.symlink("y.jpg", tmp_path / "x.jpg")
    os.symlink("x.jpg", tmp_path / "y.jpg")
    (tmp_path / "list.txt").write_text("a.jpg\nx.jpg\n")
    read = {Path(r.key).name: e for r, _, e in ListSource(tmp_path / "list.txt").iter_bytes()}
    assert read == {"a.jpg": None, "x.jpg": "a symbolic link loop (the link leads back to itself): not followed"}
