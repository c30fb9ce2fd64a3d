"""The CLI end to end on real CIFAR-10 images: index, info, search, add, remove, eval, list."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hashsearch.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def built(cifar_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "test.hsx"
    text = run(
        "index",
        cifar_small / "test",
        "--out",
        out,
        "--method",
        "itq",
        "--bits",
        "16",
        "--input-size",
        "64",
        "--cache-dir",
        tmp / "cache",
    )
    assert "indexed 40 images" in text
    return out, tmp


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """8 real photos (flowers12: 224 px JPEGs, 4 daisy, 4 iris): at --input-size 64 they decode at
    reduced scale (Pillow's draft mode), as a user's photos do."""
    import tarfile
    from pathlib import Path

    from tests.conftest import cifar_archive

    root = tmp_path_factory.mktemp("flowers")
    taken: dict[str, int] = {}
    with tarfile.open(cifar_archive().with_name("flowers12-960.tar.gz"), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if (
                m.isfile()
                and m.name.endswith(".jpg")
                and parts[-2] in ("daisy", "iris")
                and taken.get(parts[-2], 0) < 4
            ):
                (root / parts[-2]).mkdir(exist_ok=True)
                (root / parts[-2] / parts[-1]).write_bytes(tar.extractfile(m).read())
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
            if sum(taken.values()) == 8:
                break
    return root


def test_search_decodes_a_query_as_index_and_the_api_do(flowers, tmp_path, monkeypatch):
    """Session 6, finding 2: `search` decoded its queries at full size where the indexer and the API
    decode a JPEG at reduced scale, so a photo's query features were ~2 (L2) from its indexed ones."""
    from hashsearch.cli.commands import query_features
    from hashsearch.collection import Collection
    from hashsearch.data.decode import DEFAULT_MAX_PIXELS, decode_image
    from hashsearch.pipeline import extract_queries
    from hashsearch.service.state import ServiceState

    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))  # one ONNX export for the CLI and the API
    out = tmp_path / "f.hsx"
    run("index", flowers, "--out", out, "--method", "lsh", "--bits", "16", "--input-size", "64")
    query = sorted(flowers.rglob("*.jpg"))[5]
    hits = json.loads(run("search", out, query, "-k", "2", "--rerank", "8", "--json"))[0]["results"]
    # Itself first, at the float16 rounding of its stored features (about 0.01), not ~2.
    assert hits[0]["path"] == str(query) and hits[0]["distance"] < 0.05 < hits[1]["distance"]

    coll = Collection.open(out)
    cli_feats, answered, errors = query_features(coll, [query], DEFAULT_MAX_PIXELS, None)
    assert answered == [0] and not errors
    hs = ServiceState(out, cache_dir=tmp_path / "thumbs")
    api_feats = hs.features([hs.decode(query.read_bytes(), query.name, query=True)])
    np.testing.assert_array_equal(cli_feats, api_feats)
    stored = coll.features_of(np.array([hits[0]["id"]])).astype(np.float32)
    assert np.abs(stored - cli_feats).max() < 0.01
    full_size = extract_queries(coll.backbone, [decode_image(query.read_bytes())], coll.extractor())
    assert np.abs(stored - full_size).max() > 0.1  # what the CLI computed before: the test can tell


def test_index_default_by_size_on_a_small_labelled_folder(flowers, tmp_path):
    """Issue 22 and the size rule (benchmarks/results/unsupervised-small.md): on 8 photos, fewer than
    ITQ_BELOW, index's default is ITQ, fitted without labels (labels kept, not learned from), and one
    line names the choice and why; every photo finds itself first, strictly nearer than any other.
    -m bihalf-spectral given is fitted whatever the size, its stages shown line by line."""
    from hashsearch.hashing.unsupervised import ITQ_BELOW

    out, cache = tmp_path / "d.hsx", tmp_path / "cache"
    text = run("index", flowers, "--out", out, "--input-size", "64", "--cache-dir", cache)
    assert f"method: 8 images, fewer than {ITQ_BELOW:,}: ITQ" in text and "itq 64 bits" in text
    info = json.loads(run("info", out))
    assert info["method"] == "itq" and info["n_bits"] == 64
    assert info["labels"] == {"daisy": 4, "iris": 4}  # kept, though not learned from
    photos = sorted(flowers.rglob("*.jpg"))
    answers = json.loads(run("search", out, *photos, "-k", "2", "--json", "--cache-dir", cache))
    for photo, answer in zip(photos, answers):
        first, second = answer["results"]
        assert first["path"] == str(photo) and first["distance"] == 0 < second["distance"], answer
    spec = "bihalf-spectral[epochs=3]"
    text = run("index", flowers, "--out", out, "-m", spec, "--input-size", "64", "--cache-dir", cache, "--overwrite")
    assert "method:" not in text and f"{spec} 64 bits" in text
    assert "bihalf-spectral: pseudo-labels of 8 images (10 spectral clusters)..." in text
    assert "bihalf-spectral: training the hash layer, 3 epochs (3 optimiser steps)..." in text
    helptext = " ".join(runner.invoke(app, ["index", "--help"], terminal_width=200).output.split())
    assert "[default: bihalf-spectral]" not in helptext and "unsupervised-small.md" in helptext
    assert f"itq below {ITQ_BELOW} images, bihalf-spectral from {ITQ_BELOW} on" in helptext
    assert "-m 'bihalf-spectral[n_clusters=K]'" in helptext


def test_info(built):
    out, _ = built
    info = json.loads(run("info", out))
    assert info["kind"] == "collection" and info["path"] == str(out)
    assert info["count"] == 40 and info["n_bits"] == 16 and info["method"] == "itq"
    assert info["labels"]["cat"] == 4 and info["input_size"] == 64


def test_search_finds_the_query_itself_first(built, cifar_small):
    out, tmp = built
    query = sorted((cifar_small / "test" / "ship").glob("*.jpg"))[0]
    hits = json.loads(run("search", out, query, "-k", "5", "--json", "--cache-dir", tmp / "cache"))[0]["results"]
    assert len(hits) == 5 and hits[0]["distance"] == 0
    assert any(h["path"] == str(query) and h["key"] == f"ship/{query.name}" for h in hits if h["distance"] == 0)
    reranked = json.loads(
        run("search", out, query, "-k", "5", "--rerank", "20", "--json", "--cache-dir", tmp / "cache")
    )[0]["results"]
    # Stored features are float16, so the query's distance to itself is small but not 0.
    assert reranked[0]["path"] == str(query) and reranked[0]["distance"] < reranked[1]["distance"] / 10
    assert "rank" in run("search", out, query, "-k", "3", "--cache-dir", tmp / "cache")


def test_add_then_remove(built, cifar_small):
    out, tmp = built
    run("add", out, cifar_small / "train" / "frog", "--cache-dir", tmp / "cache")
    assert json.loads(run("info", out))["count"] == 48
    run("remove", out, 40, 41)
    assert json.loads(run("info", out))["count"] == 46


def test_eval_on_a_users_labelled_folder(cifar_small, tmp_path):
    stem = tmp_path / "res"
    text = run(
        "eval",
        "--data",
        cifar_small,
        "--queries-per-class",
        2,
        "--train-per-class",
        4,
        "--method",
        "lsh,itq",
        "--bits",
        "8,16",
        "--input-size",
        "64",
        "--out",
        stem,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert "itq" in text
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert {(r["method"], r["bits"]) for r in rows} == {("lsh", 8), ("lsh", 16), ("itq", 8), ("itq", 16)}
    assert "| itq" in stem.with_suffix(".md").read_text()


def test_list_names_the_plugins():
    text = run("list")
    for name in ("itq", "dlbhc", "efficientnet-lite0", "flat", "cifar10-1k"):
        assert name in text


def test_user_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code != 0
    result = runner.invoke(app, ["eval", "--method", "itq"])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_serve_on_a_taken_port_is_one_clean_line(tmp_path):
    """The port is checked before anything else: a taken port, a bad one, or an address that is not
    this machine's is one 'error:' line at once (it was a uvicorn traceback, or a 'serving' line first)."""
    import socket

    from typer.testing import CliRunner

    from hashsearch.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--port", str(port)])
    assert result.exit_code == 2 and result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert result.output.count("\n") == 1 and "serving" not in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--port", "99999"])
    assert result.exit_code == 2 and result.output.startswith(
        "error: Invalid value for '--port': Input should be less than or equal to 65535"
    )
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "x.hsx"), "--host", "192.0.2.1"])
    assert result.exit_code == 2 and "error: cannot listen on 192.0.2.1:8000" in result.output


def invoke(*args, code):
    """The CLI with its exit code checked; (stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.stdout, result.stderr


@pytest.fixture
def small(cifar_small, tmp_path):
    """A fresh 8-image collection (cat and dog test images, lsh 16 bits at 64 px) and its cache."""
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for p in sorted((cifar_small / "test" / cls).glob("*.jpg")):
            (src / cls / p.name).write_bytes(p.read_bytes())
    out, cache = tmp_path / "s.hsx", tmp_path / "cache"
    run("index", src, "--out", out, "--method", "lsh", "--bits", "16", "--input-size", "64", "--cache-dir", cache)
    return out, src, cache


def test_index_refuses_an_existing_collection_unless_overwrite(small, cifar_small):
    """Session 6, finding 3: `index --out EXISTING` silently replaced the collection (and orphaned its uploads)."""
    out, src, cache = small
    current = (out / "CURRENT").read_text()
    common = ["--method", "lsh", "--bits", "16", "--input-size", "64", "--cache-dir", cache]
    stdout, stderr = invoke("index", cifar_small / "test" / "ship", "--out", out, *common, code=2)
    assert stdout == "" and stderr.count("\n") == 1
    assert f"--out {out} is an existing collection; add images to it with `hashsearch add {out} SOURCE`" in stderr
    assert "--overwrite" in stderr and (out / "CURRENT").read_text() == current
    assert json.loads(run("info", out))["count"] == 8
    (out / "uploads").mkdir()
    (out / "uploads" / "0123abcd.jpeg").write_bytes((src / "cat" / "0000.jpg").read_bytes())
    stdout, stderr = invoke("index", cifar_small / "test" / "ship", "--out", out, *common, "--overwrite", code=0)
    assert f"replaced {out}: 4 entries" in stdout
    assert f"note: 1 image uploaded through the service stays in {out}/uploads, no longer indexed" in stderr
    assert json.loads(run("info", out))["labels"] == {"(no label)": 4}
    assert [p.name for p in out.glob("gen-*")] == [(out / "CURRENT").read_text().strip()]


def test_remove_is_all_or_nothing(small):
    """Session 6, finding 8: one unknown id removed the others and exited 1; now nothing is removed,
    the unknown ids are named in one line, and --ignore-missing removes the others."""
    out, _, _ = small
    current = (out / "CURRENT").read_text()
    stdout, stderr = invoke("remove", out, 0, 999, code=1)
    assert stdout == "" and stderr.count("\n") == 1
    assert stderr.startswith("error: no entry has the id 999 (1 of the 2 given); nothing was removed")
    assert "--ignore-missing" in stderr and (out / "CURRENT").read_text() == current
    stdout, stderr = invoke("remove", out, 1, *range(100, 107), code=1)
    assert "ids 100, 101, 102, 103, 104, ... (7 in all) (7 of the 8 given)" in stderr
    stdout, stderr = invoke("remove", out, 0, 999, "--ignore-missing", code=0)
    assert stdout == "removed 1 entry; 7 entries now\n"
    assert stderr.startswith("note: no entry has the id 999 (1 of the 2 given); removing the others")
    assert json.loads(run("info", out))["count"] == 7
    assert "All or nothing" in runner.invoke(app, ["remove", "--help"]).output


def test_errors_name_the_options_and_the_folder(small, cifar_small, tmp_path):
    """Session 6, finding 12: errors said radius, store_features, "features", and `index data/empty`
    named no folder; each is now one line in the terms of the command line."""
    out, src, cache = small
    query = src / "cat" / "0000.jpg"
    _, err = invoke("search", out, query, "--radius", 17, "--cache-dir", cache, code=2)
    assert err.startswith("error: --radius 17: a Hamming radius is at most the code length")  # no "Invalid value:"
    assert "16-bit codes; give 0 to 16" in err and err.count("\n") == 1
    bare = tmp_path / "bare.hsx"
    common = ["--method", "lsh", "--bits", "16", "--input-size", "64", "--cache-dir", cache]
    run("index", src, "--out", bare, "--no-features", *common)
    _, err = invoke("search", bare, query, "--rerank", 5, "--cache-dir", cache, code=2)
    assert f"--rerank 5: {bare} keeps no features (indexed with --no-features)" in err
    assert "store_features" not in err and err.count("\n") == 1
    from hashsearch.service.state import BadRequest, ServiceState

    with pytest.raises(BadRequest, match="rerank needs stored features, and this collection keeps none") as e:
        ServiceState(bare).search_features(np.zeros((1, 1280), np.float32), 3, None, 5, None)  # was a 500
    assert e.value.status == 422
    _, err = invoke("index", src, "--out", tmp_path / "p.hsx", "--rerank-store", "pca-2000", *common, code=2)
    assert "--rerank-store pca-2000: pca-N keeps at most as many components as there are images indexed (8)" in err
    assert "choose pca-8 or less" in err and err.count("\n") == 1
    _, err = invoke("index", src, "--out", tmp_path / "q.hsx", "--rerank-store", "pq-8", *common, code=2)
    assert "--rerank-store pq-8: pq-M fits its codebooks on at least 256 images, and 8 were indexed" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    _, err = invoke("index", empty, "--out", tmp_path / "e.hsx", *common, code=2)
    assert err.startswith(f"error: no readable image in folder {empty} (looked for files ending ")
    assert ".jpg" in err and "1 file not an image (by extension)" in err and err.count("\n") == 1


def test_methods_with_networks_of_their_own_are_refused_by_index_and_duplicates(cifar_small, tmp_path):
    """RITQ and DHFI hash features of a ResNet-32 trained from labels, which only `train` trains:
    index and duplicates used to run them on the pretrained backbone's features, silently."""
    for method in ("ritq", "dhfi"):
        _, err = invoke("index", cifar_small / "test", "--out", tmp_path / "c.hsx", "-m", method, code=2)
        assert f"--method {method} hashes features of a network of its own (cifar-resnet32)" in err
        assert f"hashsearch train LABELLED_FOLDER --method {method}" in err and "--model model.hsm" in err
        _, err = invoke("duplicates", cifar_small / "test", "-m", method, code=2)
        assert f"--method {method} hashes features of a network of its own" in err
    assert not (tmp_path / "c.hsx").exists()


def test_eval_refuses_a_single_class(cifar_small, tmp_path):
    """One class (here --labels folder on a folder wrapping the class folders, as `tar czf
    photos.tar.gz photos` makes): mAP would be 1.0 whatever the codes, so eval refuses and names
    --labels parent. The automatic labels see through the wrapper (session 7, finding 4)."""
    wrapped = tmp_path / "photos" / "wrapper"
    for cls in ("cat", "dog"):
        (wrapped / cls).mkdir(parents=True)
        for p in sorted((cifar_small / "test" / cls).glob("*.jpg")):
            (wrapped / cls / p.name).write_bytes(p.read_bytes())
    args = ("eval", "--queries-per-class", 1, "--train-per-class", 1, "--method", "lsh", "--bits", 8,
            "--input-size", 32, "--cache-dir", tmp_path / "cache")  # fmt: skip
    _, err = invoke(*args, "--data", tmp_path / "photos", "--labels", "folder", code=2)
    assert "every labelled image is of one class (wrapper" in err and "--labels parent" in err
    for labels in ("auto", "parent"):
        out, _ = invoke(*args, "--data", tmp_path / "photos", "--labels", labels, code=0)
        assert "lsh" in out and "2 classes (cat 4, dog 4)" in out, out


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hashsearch", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "bihalf-spectral" in done.stdout, done.stderr

    # A reader that stops early (`hashsearch list | head -1`): no "error: [Errno 32] Broken pipe".
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashsearch", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command writes a line
    assert proc.wait(timeout=120) == 1 and proc.stderr.read() == b""


def test_search_says_why_it_found_nothing(small, tmp_path):
    """Session 8's fresh user: `search --label rose` (no such label) and `--radius 0` with no hit printed an
    empty table; a folder as the query said only 'Is a directory'; a mistyped collection name, or a
    truncated model file given to info, said 'not a hashsearch collection'."""
    out, src, cache = small
    query = src / "cat" / "0000.jpg"
    _, err = invoke("search", out, query, "--label", "rose", "--cache-dir", cache, code=2)
    assert err.startswith(f"error: --label rose: no image of {out} has this label; its labels: cat, dog")
    _, err = invoke("search", out, query, "--label", "Dog", "--cache-dir", cache, code=2)
    assert f"--label Dog: no image of {out} has this label (did you mean --label dog? labels compare exactly)" in err
    assert err.count("\n") == 1
    # At radius 0 of a cat's code, no dog (checked through --json), and the table says so.
    text, _ = invoke("search", out, query, "--label", "dog", "--radius", 0, "--cache-dir", cache, code=0)
    dog_at_0 = json.loads(run("search", out, query, "--label", "dog", "--radius", 0, "--json", "--cache-dir", cache))
    assert dog_at_0[0]["results"] == []
    assert text.splitlines()[1:] == ["  no image within Hamming radius 0 labelled dog; a larger --radius finds more"]
    # A lookup cut at -k says so (a third fresh user read 10 results as all there were within the radius).
    text, _ = invoke("search", out, query, "--radius", 16, "-k", 3, "--cache-dir", cache, code=0)
    assert text.splitlines()[-1] == "  (the first 3 within Hamming radius 16; more may lie there: -k sets how many)"
    text, _ = invoke("search", out, query, "--radius", 16, "-k", 50, "--cache-dir", cache, code=0)
    assert "more may lie there" not in text  # all 8 images, fewer than k
    _, err = invoke("search", out, src / "cat", "--cache-dir", cache, code=1)
    assert f"a folder, not an image file: give the images in it (e.g. {src / 'cat' / '*.jpg'})" in err
    _, err = invoke("search", tmp_path / "typo.hsx", query, code=2)
    assert f"{tmp_path / 'typo.hsx'} does not exist; build a collection there" in err
    broken = tmp_path / "cut.hsm"
    broken.write_bytes(b"PK\x03\x04" + bytes(100))
    _, err = invoke("info", broken, code=2)
    assert f"{broken} is not a readable hashsearch model" in err and "copy it again or retrain" in err


def test_eval_sizes_its_split_to_a_small_folder(flowers, tmp_path):
    """Session 8's fresh user: `eval --data` on a small labelled folder failed with the defaults (100 queries
    and 500 training images per class) while `eval --model` sized its queries itself; both now size the
    split from the smallest class and say so. An empty folder is named as one (was 'no image has a label')."""
    cache = ("--cache-dir", tmp_path / "cache")
    args = ("eval", "--data", flowers, "-m", "lsh,itq[n_iter=5]", "--bits", 8, "--input-size", 64, *cache)
    text, _ = invoke(*args, "--out", tmp_path / "e", code=0)
    assert "queries: 1 per class (at most 100, and a fifth of the smallest class, daisy with 4;" in text
    assert "training images: 3 per class (at most 500, and what the smallest class keeps after its queries;" in text
    metrics = json.loads((tmp_path / "e.json").read_text())["rows"][0]["metrics"]
    assert metrics["n_queries"] == 2 and metrics["n_database"] == 6
    # The progress lines' columns line up whatever the methods' names.
    rows = [line for line in text.splitlines() if " bits  mAP " in line]
    assert len(rows) == 2 and len({line.index(" bits") for line in rows}) == 1, rows
    _, err = invoke(*args, "--queries-per-class", 2, "--train-per-class", 3, code=2)
    assert (
        "class 'daisy' has 4 labelled images, and the split takes --queries-per-class 2 and --train-per-class 3" in err
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    _, err = invoke("eval", "--data", empty, "-m", "lsh", code=2)
    assert err.startswith(f"error: --data {empty}: no image in it (looked for files ending ")
    assert "found 1 file not an image (by extension)" in err and err.count("\n") == 1


def test_index_with_a_model_notes_the_classes_it_was_not_trained_on(flowers, cifar_small, tmp_path):
    """Session 8's fresh user indexed 12 species with a model trained on 4, and nothing said so."""
    cache = ("--cache-dir", tmp_path / "cache")
    train = ("train", flowers, "-m", "itq", "--bits", 8, "--input-size", 64, "--val-fraction", 0.5)
    run(*train, "--out", tmp_path / "m.hsm", *cache)
    folder = tmp_path / "more"
    for p in flowers.rglob("*.jpg"):
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / p.parent.name / p.name).write_bytes(p.read_bytes())
    for cls in ("cat", "ship"):
        (folder / cls).mkdir()
        for p in sorted((cifar_small / "test" / cls).glob("*.jpg"))[:2]:
            (folder / cls / p.name).write_bytes(p.read_bytes())
    args = ("index", folder, "--model", tmp_path / "m.hsm", *cache)
    _, err = invoke(*args, "--out", tmp_path / "a.hsx", code=0)
    assert "note: 2 classes of this folder (cat, ship) are not among the 2 the model was trained on;" in err
    text, _ = invoke("eval", "--model", tmp_path / "m.hsm", "--data", folder, *cache, code=0)  # and eval says so too
    assert "note: 2 classes of the queries (cat, ship) are not among the 2 the model was trained on:" in text
    _, err = invoke("index", flowers, "--model", tmp_path / "m.hsm", "--out", tmp_path / "b.hsx", *cache, code=0)
    assert "note:" not in err


def test_info_shows_the_epochs_a_method_chose(small, tmp_path):
    """Session 8's fresh user: info on a bihalf collection said 'epochs=None' (the number is chosen from the data)."""
    _, src, cache = small
    out = tmp_path / "b.hsx"
    run("index", src, "--out", out, "--method", "bihalf", "--bits", "8", "--input-size", "64", "--cache-dir", cache)
    line = next(line for line in run("info", "--text", out).splitlines() if line.startswith("method"))
    assert "epochs=auto, 2000 run" in line and "None" not in line, line  # 8 images: one step an epoch, 2,000 steps


def test_index_warns_of_fewer_images_than_bits_and_shows_a_deep_fit(small, tmp_path):
    """train warned of 64 bits fitted on 3 images; index, which fits the same hashers, said nothing. A supervised
    deep head's start and end lines (logger hashsearch.hashing.deep.base) were not shown by index either."""
    _, src, cache = small  # 8 images
    common = ("--input-size", "64", "--cache-dir", cache)
    _, err = invoke("index", src, "--out", tmp_path / "a.hsx", "-m", "itq", "--bits", 16, *common, code=0)
    assert "warning: itq fitted 16 bits on 8 images, fewer images than bits:" in err and err.count("warning:") == 1
    _, err = invoke("index", src, "--out", tmp_path / "b.hsx", "-m", "lsh", "--bits", 16, *common, code=0)
    assert "warning" not in err  # random hyperplanes: nothing is learned from the images
    _, err = invoke("index", src, "--out", tmp_path / "c.hsx", "-m", "itq", "--bits", 8, *common, code=0)
    assert "warning" not in err
    _, err = invoke("index", src, "--out", tmp_path / "d.hsx", "-m", "dpsh", "--bits", 8, *common, code=0)
    assert "dpsh: training the hash layer, " in err and "dpsh: trained the hash layer in " in err


def test_index_hints_at_as_many_clusters_as_classes(flowers, tmp_path):
    """train hinted at n_clusters when an unsupervised method clustered labelled images into another number of
    clusters than their classes; index, which fits the same method (its default from 320 images), did not."""
    common = ("--bits", 8, "--input-size", 64, "--cache-dir", tmp_path / "cache")
    _, err = invoke("index", flowers, "--out", tmp_path / "a.hsx", "-m", "bihalf-spectral[epochs=2]", *common, code=0)
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    assert hint.startswith("hint: the images have 2 classes and bihalf-spectral made ")
    assert hint.endswith("index with -m 'bihalf-spectral[epochs=2,n_clusters=2]'")
    spec = "bihalf-spectral[epochs=2,n_clusters=3]"  # the user's own number: no hint
    _, err = invoke("index", flowers, "--out", tmp_path / "b.hsx", "-m", spec, *common, code=0)
    assert "hint:" not in err
