"""Image sources on real CIFAR-10 files: listing, labels, reading in place, skipping bad files."""

from __future__ import annotations

import random
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest

from hashsearch.data.sources import (
    BadImageWarning,
    FolderSource,
    ImageRecord,
    ListSource,
    SkipReport,
    TarSource,
    count_labels,
    iter_images,
    open_source,
)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def folder_bytes(root: Path) -> dict[str, bytes]:
    """relative posix path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cifar_tars(cifar_small, tmp_path_factory) -> dict[str, Path]:
    """cifar_small packed as .tar.gz (members in shuffled order) and as plain .tar."""
    out = tmp_path_factory.mktemp("tars")
    files = sorted(p for p in cifar_small.rglob("*.jpg"))
    random.Random(0).shuffle(files)  # archive order differs from key order
    paths = {}
    for name, mode in (("small.tar.gz", "w:gz"), ("small.tar", "w")):
        paths[name] = out / name
        with tarfile.open(paths[name], mode) as tar:
            for p in files:
                tar.add(p, arcname=p.relative_to(cifar_small).as_posix())
    return paths


def test_folder_source_labels_classes(cifar_small):
    src = open_source(cifar_small)
    assert isinstance(src, FolderSource)
    recs = src.records()
    assert len(recs) == 120 == len(src)
    assert [r.key for r in recs] == sorted(r.key for r in recs)
    assert count_labels(recs) == {c: 12 for c in CLASSES}
    for r in recs:
        assert r.key.startswith(str(cifar_small)) and Path(r.key).parent.name == r.label
    assert len(open_source(cifar_small / "test").records()) == 40


def test_folder_source_rules(tmp_path, cifar_small):
    jpeg = next((cifar_small / "test" / "cat").glob("*.jpg")).read_bytes()
    root = tmp_path / "mixed"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.JPG").write_bytes(jpeg)  # extension in upper case
    (root / "cat" / "notes.txt").write_text("not listed")
    (root / "cat" / "fake.png").write_text("listed: the name says image")
    (root / "cat" / ".hidden.jpg").write_bytes(jpeg)
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "b.jpg").write_bytes(jpeg)
    recs = FolderSource(root).records()
    assert [(Path(r.key).name, r.label) for r in recs] == [("a.JPG", "cat"), ("fake.png", "cat")]
    assert recs[0].key == str(root / "cat" / "a.JPG")

    # The files left out are named: not images by extension, hidden ones.
    listing = FolderSource(root).listing()
    assert listing.not_images == [str(root / "cat" / "notes.txt")]
    assert listing.hidden == [str(root / ".thumbs") + "/", str(root / "cat" / ".hidden.jpg")]
    assert listing.left_out() == (
        f"1 file not an image (by extension): {root / 'cat' / 'notes.txt'}; 2 hidden files "
        f"and folders left out: {root / '.thumbs'}/, {root / 'cat' / '.hidden.jpg'}"
    )

    # A stray image directly in the root keeps the others' labels, and is named as unlabelled.
    (root / "top.jpg").write_bytes(jpeg)
    src = FolderSource(root)
    assert {Path(r.key).name: r.label for r in src.records()} == {"a.JPG": "cat", "fake.png": "cat", "top.jpg": None}
    labels = src.listing().labels
    assert labels.unlabelled == [(str(root / "top.jpg"), "directly in the source folder, not in a class folder")]
    assert "top.jpg (directly in the source folder" in labels.summary()
    assert {r.label for r in FolderSource(root, labels="parent").records()} == {"cat", None}
    assert {r.label for r in FolderSource(cifar_small, labels="none").records()} == {None}
    with pytest.raises(
        ValueError, match="labels must be one of 'auto', 'folder', 'parent', 'none' or the path of a labels file"
    ):
        FolderSource(root, labels="class")
    with pytest.raises(ValueError, match="not a folder"):
        FolderSource(tmp_path / "nowhere").records()


@pytest.mark.parametrize("name", ["small.tar.gz", "small.tar"])
def test_tar_source_matches_folder(cifar_small, cifar_tars, name):
    tar = open_source(cifar_tars[name])
    assert isinstance(tar, TarSource)
    recs = tar.records()
    assert len(recs) == 120 and [r.key for r in recs] == sorted(r.key for r in recs)
    assert recs[0].key == f"{cifar_tars[name]}::test/airplane/{recs[0].key.rsplit('/', 1)[1]}"
    folder = {
        str(Path(r.key).relative_to(cifar_small).as_posix()): r.label for r in FolderSource(cifar_small).records()
    }
    assert {r.key.split("::", 1)[1]: r.label for r in recs} == folder
    expected = folder_bytes(cifar_small)
    got = [(r.key.split("::", 1)[1], data, err) for r, data, err in tar.iter_bytes(recs)]
    assert [g[0] for g in got] == [r.key.split("::", 1)[1] for r in recs]  # in the order asked
    assert all(err is None and data == expected[member] for member, data, err in got)


@pytest.mark.parametrize("buffer_bytes", [0, 5_000, 32 << 20])
def test_tar_gz_yields_any_order_with_any_buffer(cifar_small, cifar_tars, buffer_bytes):
    tar = TarSource(cifar_tars["small.tar.gz"], buffer_bytes=buffer_bytes)
    expected = folder_bytes(cifar_small)
    recs = tar.records()
    wanted = random.Random(1).sample(recs, 50) + [recs[3], ImageRecord(f"{tar.path}::nope/x.jpg")]
    out = list(tar.iter_bytes(wanted))
    assert [r for r, _, _ in out] == wanted
    for r, data, err in out[:-1]:
        assert err is None and data == expected[r.key.split("::", 1)[1]]
    assert out[-1][1] is None and "not an image member" in out[-1][2]


def test_tar_reads_everything_in_archive_order(cifar_tars):
    tar = TarSource(cifar_tars["small.tar.gz"])
    with tarfile.open(cifar_tars["small.tar.gz"]) as t:
        archive_order = [m.name for m in t.getmembers() if m.isfile()]
    streamed = [r.key.split("::", 1)[1] for r, _, _ in tar.iter_bytes()]
    assert streamed == archive_order
    assert [r.key.split("::", 1)[1] for r in tar.read_order(tar.records())] == archive_order


def test_tar_member_names_are_cleaned(tmp_path, cifar_small):
    src = next((cifar_small / "test" / "dog").glob("*.jpg"))
    path = tmp_path / "dot.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="./dog/a.jpg")
        tar.add(src, arcname="./dog/._a.jpg")  # macOS resource fork
        tar.add(src, arcname="./__MACOSX/dog/a.jpg")
        tar.add(src, arcname="./dog/readme.md")
    recs = open_source(path).records()
    assert recs == [ImageRecord(f"{path}::dog/a.jpg", "dog")]
    assert next(TarSource(path).iter_bytes(recs))[1] == src.read_bytes()


def test_damaged_archive_is_a_clear_error(tmp_path, cifar_tars):
    data = cifar_tars["small.tar.gz"].read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable tar archive"):
        TarSource(cut).records()


def test_list_source(tmp_path, cifar_small):
    images = sorted((cifar_small / "test" / "cat").glob("*.jpg"))[:2]
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(images):
        shutil.copy(p, tmp_path / "imgs" / f"{i}.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text(
        f"# two images and a missing one\nimgs/0.jpg\tcat\n\nimgs/1.jpg\n{images[0]}\tfeline\nimgs/gone.jpg\tcat\n"
    )
    recs = open_source(lst).records()
    assert recs == sorted(
        [
            ImageRecord(str(tmp_path / "imgs/0.jpg"), "cat"),
            ImageRecord(str(tmp_path / "imgs/1.jpg"), None),
            ImageRecord(str(images[0]), "feline"),
            ImageRecord(str(tmp_path / "imgs/gone.jpg"), "cat"),
        ],
        key=lambda r: r.key,
    )
    read = {Path(r.key).name: (data, err) for r, data, err in ListSource(lst).iter_bytes()}
    assert read["0.jpg"][0] == images[0].read_bytes()
    assert read["gone.jpg"][0] is None and "cannot read" in read["gone.jpg"][1]
    assert {r.label for r in ListSource(lst, labels="none").records()} == {None}

    csv = tmp_path / "list.csv"
    csv.write_text('path,label\nimgs/0.jpg,cat\n"imgs/1.jpg",dog\n')
    assert [(Path(r.key).name, r.label) for r in open_source(csv).records()] == [("0.jpg", "cat"), ("1.jpg", "dog")]

    lst.write_text("imgs/0.jpg\tcat\nimgs/0.jpg\tdog\n")
    with pytest.raises(ValueError, match="line 1 and 'dog' on line 2"):
        ListSource(lst).records()
    lst.write_text("imgs/0.jpg\tcat\textra\n")
    with pytest.raises(ValueError, match="line 1: expected 'path' or 'path<TAB>label'"):
        ListSource(lst).records()


def test_open_source_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist; give a folder of images, a tar archive"):
        open_source(tmp_path / "missing")
    (tmp_path / "data.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="unknown kind"):
        open_source(tmp_path / "data.bin")
    (tmp_path / "one.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match="a single image"):
        open_source(tmp_path / "one.jpg")


def test_iter_images_skips_and_reports_bad_files(tmp_path, cifar_small):
    folder = tmp_path / "mixed"
    shutil.copytree(cifar_small / "test" / "cat", folder / "cat")
    (folder / "cat" / "empty.jpg").write_bytes(b"")
    (folder / "cat" / "notes.png").write_text("not an image")
    good = next((cifar_small / "test" / "dog").glob("*.jpg")).read_bytes()
    (folder / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    report = SkipReport()
    with pytest.warns(BadImageWarning) as caught:
        decoded = list(iter_images(open_source(folder), report=report))
    assert len(decoded) == 4 and all(img.mode == "RGB" and img.size == (32, 32) for _, img in decoded)
    bad = {Path(key).name: reason for key, reason in report.skipped}
    assert set(bad) == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert "empty" in bad["empty.jpg"] and "not an image" in bad["notes.png"] and "truncated" in bad["truncated.jpg"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3 and all(m.startswith(f"skipping {folder}") for m in messages)
    assert report.summary().startswith("3 files skipped: ")


def test_iter_images_reports_unreadable_records(tmp_path):
    report = SkipReport()
    records = [ImageRecord(str(tmp_path / "gone.jpg"), "x")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(iter_images(FolderSource(tmp_path), records, report=report)) == []
    assert len(caught) == 1 and issubclass(caught[0].category, BadImageWarning)
    assert report.skipped[0][0] == records[0].key and "cannot read" in report.skipped[0][1]


def test_skip_report_summary():
    report = SkipReport()
    assert len(report) == 0 and report.summary() == "0 files skipped"
    report.add("a.jpg", "empty file")
    assert report.summary() == "1 file skipped: a.jpg (empty file)"
    for i in range(7):
        report.add(f"{i}.jpg", "bad")
    assert len(report) == 8
    assert report.summary(limit=2) == "8 files skipped: a.jpg (empty file); 0.jpg (bad); and 6 more"
    assert Counter(k for k, _ in report.skipped)["a.jpg"] == 1


def _flowers12(dest: Path, species=("daisy", "iris", "sunflower"), per_species: int = 3) -> Path:
    """`dest/<species>/*.jpg`: the first `per_species` real photos of each species in the flowers12
    archive's order (../shared/datasets/flowers12-960.tar.gz)."""
    from tests.conftest import cifar_archive

    taken: Counter = Counter()
    with tarfile.open(cifar_archive().with_name("flowers12-960.tar.gz"), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and m.name.endswith(".jpg") and parts[-2] in species and taken[parts[-2]] < per_species:
                (dest / parts[-2]).mkdir(parents=True, exist_ok=True)
                (dest / parts[-2] / parts[-1]).write_bytes(tar.extractfile(m).read())
                taken[parts[-2]] += 1
            if sum(taken.values()) == per_species * len(species):
                break
    return dest


def test_auto_labels_see_through_one_folder_holding_every_image(tmp_path):
    """Session 7, finding 4: `tar czf photos.tar.gz photos` (photos/<species>/*.jpg) was labelled as
    ONE class, "photos". The automatic rule now takes the class folders inside a single folder that
    holds every image, and says so; --labels folder keeps the first folder (the wrapper)."""
    photos = _flowers12(tmp_path / "photos")
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="photos")
    for src in (TarSource(archive), FolderSource(tmp_path)):  # the archive, and the folder above photos/
        recs = src.records()
        assert count_labels(recs) == {"daisy": 3, "iris": 3, "sunflower": 3}, src
        summary = src.listing().labels.summary()
        assert summary.startswith("labels: one folder per class inside photos/, the one folder holding every image")
        assert (
            "--labels folder labels them all by it" in summary and "3 classes (daisy 3, iris 3, sunflower 3)" in summary
        )
    assert count_labels(TarSource(archive, labels="folder").records()) == {"photos": 9}
    assert count_labels(FolderSource(photos).records()) == {"daisy": 3, "iris": 3, "sunflower": 3}  # as before

    # A stray photo directly in the wrapper is named as unlabelled; the others keep their species.
    (photos / "cover.jpg").write_bytes(next((photos / "iris").iterdir()).read_bytes())
    src = FolderSource(tmp_path)
    assert count_labels(src.records()) == {"daisy": 3, "iris": 3, "sunflower": 3, None: 1}
    assert src.listing().labels.unlabelled == [
        (str(photos / "cover.jpg"), "directly in photos/, the folder holding every image, not in a class folder")
    ]
    (photos / "cover.jpg").unlink()

    # Split folders inside the wrapper: the class folders below them.
    wrapped = tmp_path / "wrapped"
    shutil.copytree(photos, wrapped / "data" / "train")
    shutil.copytree(photos, wrapped / "data" / "test")
    src = FolderSource(wrapped)
    assert count_labels(src.records()) == {"daisy": 6, "iris": 6, "sunflower": 6}
    assert src.listing().labels.layout.startswith("class folders under the split folders test/, train/ inside data/")

    # One folder inside the wrapper: one class either way, the wrapper's name kept.
    single = tmp_path / "single"
    shutil.copytree(photos / "daisy", single / "top" / "daisy")
    assert count_labels(FolderSource(single).records()) == {"top": 3}
