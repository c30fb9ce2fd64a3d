"""The CLI on a folder as a user has it (issue 18): a stray image, a Latin-1 name, an iPhone HEIC,
a duplicate, files that are not images, a large photo; then add, remove, search and eval on it.
Each problem is one clean line; nothing is a traceback or a raw Python warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from hashsearch.cli import app

runner = CliRunner()
CAFE = b"caf\xe9.jpg"


def invoke(*args, code=0):
    result = runner.invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and ".py:" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def photos(cifar_small, tmp_path_factory) -> Path:
    """photos/{cat,dog}/ of real JPEGs, plus what a real folder holds (see the module docstring)."""
    pytest.importorskip("pillow_heif")
    root = tmp_path_factory.mktemp("real") / "photos"
    test = cifar_small / "test"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for p in sorted((test / cls).glob("*.jpg"))[:4]:
            shutil.copy(p, root / cls / p.name)
    cat0 = sorted((root / "cat").glob("*.jpg"))[0]
    shutil.copy(cat0, root / "cat" / "copy.jpg")  # a duplicate
    with open(os.path.join(os.fsencode(root / "cat"), CAFE), "wb") as f:  # a Latin-1 name
        f.write(sorted((test / "bird").glob("*.jpg"))[0].read_bytes())
    frog = Image.open(sorted((test / "frog").glob("*.jpg"))[0]).resize((96, 96))
    frog.save(root / "dog" / "IMG_0001.HEIC", "HEIF", quality=90)  # as an iPhone writes them
    shutil.copy(sorted((test / "airplane").glob("*.jpg"))[0], root / "cover.jpg")  # a stray image
    (root / "cat" / "notes.jpg").write_text("not a picture")
    Image.open(sorted((test / "ship").glob("*.jpg"))[0]).resize((200, 200)).save(root / "dog" / "big.png")
    (root / "README.txt").write_text("my photos")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1")
    return root


@pytest.fixture(scope="module")
def built(photos, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-cli")
    out, cache = tmp / "p.hsx", tmp / "cache"
    result = invoke(
        "index",
        photos,
        "--out",
        out,
        "--method",
        "itq",  # the method is not what this module tests; the default (bihalf-spectral) fits slower
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        cache,
        "--max-pixels",
        "20000",
        "--skip-list",
        tmp / "skipped.tsv",
    )
    return out, cache, tmp, result


def test_index_reports_every_file_on_one_line_each(built, photos):
    out, _, tmp, result = built
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "indexed 11 images (11 features computed, 0 from the cache); 2 files skipped; 1 duplicate skipped; "
        "2 left out by name (not an image, or hidden); features "
    )  # the counts cover every file of the lines below (a fresh user read '0 files skipped', then a file listed)
    assert lines[1] == (
        f"labels: one folder per class; 2 classes (cat 5, dog 5); 1 image has no label: "
        f"{photos}/cover.jpg (directly in the source folder, not in a class folder)"
    )
    assert lines[2].startswith(f"2 files skipped: {photos}/cat/notes.jpg (not an image: it holds text")
    assert (
        f"{photos}/dog/big.png (too many pixels: 200x200 = 40,000, above the limit of 20,000; "
        f"if the image is trusted, raise the limit: --max-pixels 40000 on the command line" in lines[2]
    )
    cat0 = sorted((photos / "cat").glob("0*.jpg"))[0]
    assert lines[3] == (
        f"1 duplicate skipped (keep them with --keep-duplicates): {photos}/cat/copy.jpg (same bytes as {cat0})"
    )
    assert lines[4] == (
        f"1 file not an image (by extension): {photos}/README.txt; 1 hidden file or folder left out: {photos}/.DS_Store"
    )
    assert lines[5].startswith(f"wrote {tmp}/skipped.tsv: 5 files not indexed")
    assert lines[6] == f"wrote {out}: 11 entries, itq 16 bits, efficientnet-lite0 at 64px"
    # One clean line per skipped file on stderr, no Python warning format.
    errs = [line for line in result.stderr.splitlines() if not line.startswith("exported ")]  # the ONNX export's note
    few = "warning: itq fitted 16 bits on 11 images, fewer images than bits: "  # the fit's own warning, once
    assert sum(e.startswith(few) for e in errs) == 1
    assert sorted(e for e in errs if not e.startswith(few)) == sorted(
        f"warning: skipping {photos}/{n}: {r}"
        for n, r in [
            ("cat/notes.jpg", "not an image: it holds text ('not a picture')"),
            (
                "dog/big.png",
                "too many pixels: 200x200 = 40,000, above the limit of 20,000; if the image is trusted, "
                "raise the limit: --max-pixels 40000 on the command line, max_pixels=40000 in Python",
            ),
        ]
    )
    info = json.loads(invoke("info", out).stdout)
    assert info["count"] == 11 and info["labels"] == {"(no label)": 1, "cat": 5, "dog": 5}
    skipped = (tmp / "skipped.tsv").read_text().splitlines()
    assert skipped[0] == "key\treason" and sorted(s.split("\t")[0] for s in skipped[1:]) == sorted(
        f"{photos}/{n}" for n in ("cat/notes.jpg", "dog/big.png", "cat/copy.jpg", "README.txt", ".DS_Store")
    )


def test_a_latin1_name_and_a_heic_photo_are_found(built, photos):
    out, cache, _, _ = built
    cafe = os.path.join(os.fsencode(photos / "cat"), CAFE)
    answer = json.loads(invoke("search", out, cafe, "-k", "3", "--json", "--cache-dir", cache).stdout)[0]
    top = answer["results"][0]
    assert top["distance"] == 0 and os.fsencode(top["key"]) == b"cat/" + CAFE and os.fsencode(top["path"]) == cafe
    assert os.fsencode(answer["query"]) == cafe
    text = invoke("search", out, cafe, "-k", "1", "--cache-dir", cache).stdout
    assert "caf\\xe9.jpg" in text  # readable, on one line
    heic = json.loads(
        invoke("search", out, photos / "dog" / "IMG_0001.HEIC", "-k", "1", "--json", "--cache-dir", cache).stdout
    )[0]["results"][0]
    assert heic["key"] == "dog/IMG_0001.HEIC" and heic["distance"] == 0 and heic["label"] == "dog"


def test_text_output_of_a_latin1_name_in_a_real_process(built, photos):
    # A real terminal's stdout is strict UTF-8: printing the raw name would crash there.
    out, cache, _, _ = built
    cafe = os.path.join(os.fsencode(photos / "cat"), CAFE)
    exe = Path(sys.executable).with_name("hashsearch")
    proc = subprocess.run(
        [os.fsencode(exe), b"search", os.fsencode(out), cafe, b"-k", b"2", b"--cache-dir", os.fsencode(cache)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"cat/caf\\xe9.jpg" in proc.stdout and b"Traceback" not in proc.stderr


def test_one_bad_query_does_not_stop_the_others(built, photos):
    out, cache, _, _ = built
    good = sorted((photos / "dog").glob("0*.jpg"))[0]
    result = invoke(
        "search",
        out,
        photos / "cat" / "notes.jpg",
        good,
        photos / "gone.jpg",
        "-k",
        "2",
        "--json",
        "--cache-dir",
        cache,
    )
    answers = json.loads(result.stdout)
    assert [("error" in a, "results" in a) for a in answers] == [(True, False), (False, True), (True, False)]
    assert answers[1]["results"][0]["distance"] == 0
    assert result.stderr.splitlines() == [
        f"error: query {photos}/cat/notes.jpg: not an image: it holds text ('not a picture')",
        f"error: query {photos}/gone.jpg: cannot read the file (No such file or directory)",
    ]
    invoke("search", out, photos / "cat" / "notes.jpg", "--cache-dir", cache, code=1)  # none answered


def test_add_again_adds_nothing_and_writes_nothing(built, photos, tmp_path):
    out, cache, _, _ = built
    coll = tmp_path / "copy.hsx"
    shutil.copytree(out, coll)
    current = (coll / "CURRENT").read_text()
    result = invoke("add", coll, photos, "--cache-dir", cache, "--max-pixels", "20000")
    assert "; 12 duplicates skipped;" in result.stdout.splitlines()[0]
    assert "added nothing; 11 entries as before (the collection was not written)" in result.stdout
    assert (coll / "CURRENT").read_text() == current
    result = invoke("add", coll, photos / "dog", "--cache-dir", cache, "--keep-duplicates")
    assert "added 6 entries" in result.stdout and "17 entries now" in result.stdout  # big.png fits the default limit
    assert json.loads(invoke("info", coll).stdout)["count"] == 17


def test_remove_of_unknown_ids_names_them_and_writes_nothing(built, tmp_path):
    out, _, _, _ = built
    coll = tmp_path / "copy.hsx"
    shutil.copytree(out, coll)
    current = (coll / "CURRENT").read_text()
    result = invoke("remove", coll, "999", "12345678901234567890", code=1)
    assert result.stdout == ""
    assert result.stderr.startswith("error: no entry has the ids 999, 12345678901234567890 (2 of the 2 given);")
    assert (coll / "CURRENT").read_text() == current
    # All or nothing (session 6, finding 8): one unknown id, and the known one stays too.
    result = invoke("remove", coll, "0", "999", code=1)
    assert result.stdout == "" and result.stderr.startswith("error: no entry has the id 999 (1 of the 2 given);")
    assert "nothing was removed" in result.stderr and (coll / "CURRENT").read_text() == current


def test_a_failed_save_names_the_path_and_keeps_the_features(built, photos, tmp_path):
    _, cache, _, _ = built
    # --out under a file is refused before any work.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("index", photos / "cat", "--out", blocker / "p.hsx", "--bits", "16", code=2)
    assert f"--out {blocker}/p.hsx: {blocker} is a file, not a folder" in result.output
    # A save that fails after the features (its CURRENT cannot be replaced: a folder stands there).
    out = tmp_path / "broken.hsx"
    (out / "CURRENT").mkdir(parents=True)
    result = invoke(
        "index",
        photos / "cat",
        "--out",
        out,
        "-m",
        "itq",
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        tmp_path / "cache",
        code=2,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: saving {out} failed (IsADirectoryError")
    assert errors[0].endswith("run the command again once the problem is fixed, and none of them is computed again")
    result = invoke(
        "index",
        photos / "cat",
        "--out",
        tmp_path / "p.hsx",
        "-m",
        "itq",
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert "(0 features computed, 6 from the cache)" in result.stdout  # 5 images and a duplicate


def test_option_errors_are_one_clean_line(photos, tmp_path):
    result = invoke("index", photos, "--out", tmp_path / "x.hsx", "--bits", "4096", code=2)
    assert "--bits 4096: code lengths from 8 to 128 bits are supported" in result.output
    result = invoke("eval", "--data", photos, "--bits", "16,256", code=2)
    assert "--bits 256: code lengths from 8 to 128 bits" in result.output
    result = invoke("index", photos, "--out", tmp_path / "x.hsx", "--labels", "classes", code=2)
    assert "--labels classes: give one of auto, folder, parent, none, or an existing labels file" in result.output
    result = invoke("index", photos, "--out", tmp_path / "x.hsx", "--max-pixels", "0", code=2)
    assert "--max-pixels" in result.output
    result = invoke("index", photos, "--out", tmp_path / "x.hsx", "--skip-list", tmp_path / "no" / "s.tsv", code=2)
    assert f"--skip-list {tmp_path}/no/s.tsv: cannot write it (No such file or directory)" in result.output
    # Click's own errors too: one line naming the problem and where help is, never click's four.
    for args, text in [
        (("remove", tmp_path / "x.hsx", "-5"), "error: No such option: -5 (see `hashsearch remove --help`)"),
        (("search",), "error: Missing argument 'collection'. (see `hashsearch search --help`)"),
        (("nosuch",), "error: No such command 'nosuch'. (see `hashsearch --help`)"),
        (("index", photos, "--out", "x", "--bits", "4"), "error: --bits 4: code lengths"),  # no "Invalid value:"
        (("index", photos, "--out", "x", "--batch-size", "0"), "error: Invalid value for '--batch-size': "),
    ]:
        result = invoke(*args, code=2)
        shown = result.output.replace("`root", "`hashsearch")  # CliRunner's program name is "root"
        assert shown.startswith(text) and shown.count("\n") == 1, result.output


def test_eval_leaves_out_the_stray_image_and_names_it(built, photos, tmp_path):
    _, cache, _, _ = built
    result = invoke(
        "eval",
        "--data",
        photos,
        "--queries-per-class",
        1,
        "--train-per-class",
        2,
        "--method",
        "lsh",
        "--bits",
        "8",
        "--input-size",
        "64",
        "--cache-dir",
        cache,
        "--max-pixels",
        "20000",
    )
    assert "labels: one folder per class; 2 classes (cat 7, dog 6)" in result.stdout  # as listed, before decoding
    assert (
        f"left out of the evaluation: 1 image has no label: {photos}/cover.jpg (directly in the source "
        "folder, not in a class folder)"
    ) in result.stdout
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((photos / "cat").glob("0*.jpg")):
        shutil.copy(p, flat / p.name)
    result = invoke("eval", "--data", flat, "--method", "lsh", "--bits", "8", code=2)
    assert result.stderr.startswith(
        f"error: --data {flat}: no image has a label (labels: none: no image is in a "
        "class folder below the source folder); an evaluation needs classes"
    )


def test_eval_of_a_folder_whose_names_are_not_utf8_writes_its_report(cifar_small, tmp_path, built):
    # A real process: the report quotes the command line, which holds the folder's name.
    _, cache, _, _ = built
    root = os.path.join(os.fsencode(tmp_path), b"ph\xe9tos")
    for cls, folder in (("cat", b"ch\xe2t"), ("dog", b"dog")):
        os.makedirs(os.path.join(root, folder))
        for p in sorted((cifar_small / "test" / cls).glob("*.jpg")):
            shutil.copy(p, os.path.join(root, folder, os.fsencode(p.name)))
    exe = Path(sys.executable).with_name("hashsearch")
    proc = subprocess.run(
        [
            os.fsencode(exe),
            b"eval",
            b"--data",
            root,
            b"--queries-per-class",
            b"1",
            b"--train-per-class",
            b"2",
            b"--method",
            b"lsh",
            b"--bits",
            b"8",
            b"--input-size",
            b"64",
            b"--out",
            os.fsencode(tmp_path / "res"),
            b"--cache-dir",
            os.fsencode(cache),
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"labels: one folder per class; 2 classes (ch\\xe2t 4, dog 4)" in proc.stdout
    md = (tmp_path / "res.md").read_text(encoding="utf-8")
    assert "Data: " + str(tmp_path) + "/ph\\xe9tos" in md and "--data " in md


def test_an_interruption_says_the_features_are_kept(photos, tmp_path, monkeypatch):
    from hashsearch.pipeline import build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_extractor", lambda engine: interrupted)
    result = invoke("index", photos, "--out", tmp_path / "x.hsx", "--bits", "16", code=130)
    assert result.stderr.strip() == (
        "error: interrupted; the features computed so far are in the feature cache, "
        "and running the command again computes only the rest"
    )


def test_search_takes_max_pixels(built, photos):
    out, cache, _, _ = built
    query = sorted((photos / "dog").glob("0*.jpg"))[0]  # 32 x 32
    result = invoke("search", out, query, "--max-pixels", "100", "--cache-dir", cache, code=1)
    assert result.stderr.strip() == (
        f"error: query {query}: too many pixels: 32x32 = 1,024, above the limit of 100; "
        "if the image is trusted, raise the limit: --max-pixels 1024 on the command "
        "line, max_pixels=1024 in Python"
    )


def test_a_moved_folder_is_repaired_by_relocate(photos, built, tmp_path, monkeypatch):
    """`cd /data && index ./photos`, then from elsewhere: paths resolve; after the folder moves,
    `info` shows it missing and one `relocate` repoints the collection."""
    _, cache, _, _ = built
    data = tmp_path / "data"
    shutil.copytree(photos / "cat", data / "photos" / "cat")
    monkeypatch.chdir(data)
    invoke(
        "index",
        "./photos",
        "--out",
        tmp_path / "srv" / "p.hsx",
        "-m",
        "itq",
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        cache,
    )
    monkeypatch.chdir(tmp_path)
    query = sorted((data / "photos" / "cat").glob("*.jpg"))[0]
    hit = json.loads(invoke("search", "srv/p.hsx", query, "-k", "1", "--json", "--cache-dir", cache).stdout)[0][
        "results"
    ][0]
    assert Path(hit["path"]) == query and hit["key"] == f"cat/{query.name}" and hit["distance"] == 0
    shutil.move(data / "photos", tmp_path / "moved")
    sources = json.loads(invoke("info", "srv/p.hsx").stdout)["sources"]
    # cat/ holds 4 JPEGs, the Latin-1 one, a duplicate and a text file: 5 entries
    assert sources == [{"root": str(data / "photos"), "count": 5, "exists": False}]
    result = invoke("relocate", "srv/p.hsx", tmp_path / "nowhere", tmp_path / "moved", code=2)
    assert f"no entry lies under {tmp_path / 'nowhere'}; the collection reads from: {data / 'photos'}" in result.output
    result = invoke("relocate", "srv/p.hsx", data / "photos", tmp_path / "moved")
    assert result.stdout == f"relocated 5 entries from {data / 'photos'} to {tmp_path / 'moved'}\n"
    hit = json.loads(
        invoke(
            "search", "srv/p.hsx", tmp_path / "moved" / "cat" / query.name, "-k", "1", "--json", "--cache-dir", cache
        ).stdout
    )[0]["results"][0]
    assert Path(hit["path"]) == tmp_path / "moved" / "cat" / query.name
    assert json.loads(invoke("info", "srv/p.hsx").stdout)["sources"][0]["exists"] is True


def test_search_filters_by_label_as_the_api_does(built, photos):
    out, cache, _, _ = built
    query = sorted((photos / "dog").glob("*.jpg"))[0]
    found = json.loads(invoke("search", out, query, "-k", "3", "--label", "cat", "--json", "--cache-dir", cache).stdout)
    hits = found[0]["results"]
    assert len(hits) == 3 and {h["label"] for h in hits} == {"cat"}
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["distance"] == h["hamming"] for h in hits)
    rerank = json.loads(
        invoke("search", out, query, "-k", "2", "--rerank", "10", "--json", "--cache-dir", cache).stdout
    )
    assert all(isinstance(h["hamming"], int) and h["distance"] >= 0 for h in rerank[0]["results"])
