"""`hashsearch train` end to end on real CIFAR-10 images (32 px, 4 classes, 96 images, so it takes
seconds): fine-tuning beats the frozen head on held-out images, a killed run resumes and ends as
an uninterrupted one, and the model file alone indexes and searches an unlabelled folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashsearch.cli import app
from tests.conftest import cifar_archive

runner = CliRunner()
CLASSES = ("airplane", "automobile", "ship", "truck")
#: The training command of every run here (the output and the folder are added).
TRAIN = (
    "--method hashnet --bits 16 --input-size 32 --mode finetune --epochs 6 --patience 3 "
    "--val-fraction 0.25 --device auto --seed 0"
).split()


def run(*args, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def record(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("model.json"))["training"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with `data/<class>/*.jpg`: the first 24 training images of 4 CIFAR-10 classes."""
    root = tmp_path_factory.mktemp("train")
    taken: dict[str, int] = {}
    with tarfile.open(cifar_archive(), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] != "train" or parts[-2] not in CLASSES:
                continue
            if taken.get(parts[-2], 0) >= 24:
                if len(taken) == len(CLASSES) and min(taken.values()) >= 24:
                    break
                continue
            dest = root / "data" / parts[-2] / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
            taken[parts[-2]] = taken.get(parts[-2], 0) + 1
    return root


@pytest.fixture(autouse=True)
def _cache(work, monkeypatch):
    # Where in-process commands export ONNX models and unpack a model's weights.
    monkeypatch.setenv("HASHSEARCH_CACHE", str(work / "cache"))


@pytest.fixture(scope="module")
def trained(work):
    """The uninterrupted fine-tuning run: (model path, its output)."""
    out = work / "ref.hsm"
    text = run("train", work / "data", "--out", out, "--cache-dir", work / "cache", *TRAIN)
    return out, text


def test_finetuning_improves_validation_map_over_the_frozen_head(trained):
    out, text = trained
    r = record(out)
    assert r["mode"] == "finetune" and r["data"]["train"] == 72 and r["data"]["validation"] == 24
    # The head alone on the pretrained network's frozen features, then head and network together.
    assert r["val_map"] > r["frozen_val_map"] + 0.02, (r["val_map"], r["frozen_val_map"])
    assert r["epochs"]["val_map"][r["epochs"]["best_epoch"] - 1] == r["val_map"]
    assert len(r["epochs"]["loss"]) == len(r["epochs"]["val_map"]) <= 6
    assert r["data"]["digest"] and r["machine"]["cpus"] and r["seconds"] > 0
    assert "best validation mAP" in text and "the head on frozen features" in text
    curve = out.with_name("ref-training.png")
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not out.with_name("ref.hsm.ckpt").exists()  # removed once the model is saved


def test_a_killed_training_resumes_and_ends_as_the_uninterrupted_run(trained, work):
    ref = record(trained[0])
    out = work / "killed.hsm"
    ckpt = out.with_name("killed.hsm.ckpt")
    cmd = [
        sys.executable,
        "-c",
        "from hashsearch.cli import main; main()",
        "train",
        str(work / "data"),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [*cmd, "--cache-dir", str(work / "cache"), *TRAIN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HASHSEARCH_CACHE": str(work / "cache")},
    )
    try:
        deadline = time.monotonic() + 600
        while not (ckpt / "joint.pt").exists():  # the first epoch of fine-tuning is checkpointed
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait()
    assert not out.exists()

    text = run("train", work / "data", "--out", out, "--cache-dir", work / "cache", *TRAIN)
    assert "resuming from the checkpoint" in text and "resumed the joint stage after epoch" in text, text
    r = record(out)
    assert r["epochs"]["resumed_at"] >= 1
    assert len(r["epochs"]["loss"]) == len(ref["epochs"]["loss"])
    assert r["epochs"]["best_epoch"] == ref["epochs"]["best_epoch"]
    assert r["epochs"]["val_map"] == pytest.approx(ref["epochs"]["val_map"], abs=1e-6)
    assert _id(out) == _id(trained[0])
    assert not ckpt.exists()

    # A checkpoint of another training is not resumed from: the run stops and says what to do.
    ckpt.mkdir()
    (ckpt / "run.json").write_text(json.dumps({"version": 1, "method": "dpsh"}))
    text = run("train", work / "data", "--out", out, *TRAIN, "--overwrite", code=2)
    assert "--fresh" in text


def test_the_model_file_alone_indexes_and_searches_an_unlabelled_folder(trained, work, cifar_small, tmp_path):
    # The model copied alone to another folder, the training data gone, and a fresh cache.
    model = tmp_path / "elsewhere" / "m.hsm"
    model.parent.mkdir()
    shutil.copyfile(trained[0], model)
    gone = work / "data-gone"
    (work / "data").rename(gone)
    try:
        photos = tmp_path / "photos"
        photos.mkdir()
        for i, f in enumerate(sorted((cifar_small / "test").rglob("*.jpg"))):
            shutil.copyfile(f, photos / f"img{i:03d}.jpg")  # no class folders: no labels
        env = {**os.environ, "HASHSEARCH_CACHE": str(tmp_path / "fresh-cache")}
        hs = [sys.executable, "-c", "from hashsearch.cli import main; main()"]

        def cli(*args):
            p = subprocess.run([*hs, *map(str, args)], capture_output=True, text=True, env=env, cwd=model.parent)
            return p.returncode, p.stdout + p.stderr

        # Through ONNX Runtime quantized to int8, like a stock backbone.
        code, text = cli("index", photos, "--model", model.name, "--int8", "--out", "c.hsx")
        assert code == 0, text
        assert "indexed 40 images" in text and f"model {_id(model)[:12]}" in text
        code, text = cli("search", "c.hsx", photos / "img007.jpg", "-k", "3", "--json")
        assert code == 0, text
        hits = json.loads(text[text.index("[") :])[0]["results"]
        assert hits[0]["path"].endswith("img007.jpg") and hits[0]["hamming"] == 0
        code, text = cli("info", "c.hsx")
        assert json.loads(text)["model"]["id"] == _id(model) and json.loads(text)["encoding"] == "int8"

        # Adding through another model is refused, naming both.
        other = tmp_path / "itq.hsm"
        # (An unsupervised method trains on unlabelled images: it fits on all of them, no validation.)
        text = run("train", photos, "--method", "itq", "--bits", "16", "--input-size", "32", "--out", other)
        assert "no labels: itq fits on all 40 images" in text and record(other)["val_map"] is None
        code, text = cli("add", "c.hsx", cifar_small / "train" / "cat", "--model", other)
        assert code == 2 and _id(model)[:12] in text and _id(other)[:12] in text, text
        assert text.count("\n") == 1 and "Traceback" not in text
    finally:
        gone.rename(work / "data")


def _id(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("model.json"))["id"]


def test_finetune_mode_needs_a_deep_method(cifar_small, tmp_path):
    text = run(
        "train", cifar_small / "train", "--method", "itq", "--mode", "finetune", "--out", tmp_path / "m.hsm", code=2
    )
    assert "--mode finetune" in text and "hashnet" in text and not (tmp_path / "m.hsm").exists()


def _flat(work: Path, dest: Path) -> Path:
    """The fixture's images in one folder, without class folders: no labels."""
    dest.mkdir()
    for i, f in enumerate(sorted((work / "data").rglob("*.jpg"))):
        shutil.copyfile(f, dest / f"img{i:03d}.jpg")
    return dest


@pytest.mark.parametrize("method", ["bihalf", "greedyhash-unsup", "ssdh", "bihalf-spectral"])
def test_unsupervised_deep_methods_train_on_unlabelled_and_labelled_images(method, work, tmp_path):
    common = ["--method", method, "--bits", "16", "--input-size", "32", "--epochs", "3", "--cache-dir", work / "cache"]
    # No labels: all images train, there is nothing to validate on, and the last epoch is kept.
    out = tmp_path / "u.hsm"
    text = run("train", _flat(work, tmp_path / "flat"), "--out", out, *common)
    assert "no validation mAP" in text and "kept the last epoch" in text, text
    r = record(out)
    assert r["val_map"] is None and r["data"]["train"] == 96 and r["data"]["validation"] == 0
    assert len(r["epochs"]["loss"]) == 3 and r["epochs"]["best_epoch"] is None
    # Labels: validated with them (held-out images' mAP), trained without them.
    out = tmp_path / "l.hsm"
    text = run("train", work / "data", "--out", out, "--val-fraction", "0.25", *common)
    r = record(out)
    assert r["data"]["validation"] == 24 and len(r["epochs"]["val_map"]) >= 1 and 0 < r["val_map"] <= 1, text
    assert "best validation mAP" in text


def test_unsupervised_finetune_on_unlabelled_images(work, tmp_path):
    out = tmp_path / "f.hsm"
    text = run(
        "train", _flat(work, tmp_path / "flat"), "--out", out, "--method", "bihalf", "--bits", "16",
        "--input-size", "32", "--mode", "finetune", "--epochs", "1", "--cache-dir", work / "cache",
    )  # fmt: skip
    r = record(out)
    assert r["mode"] == "finetune" and r["val_map"] is None and len(r["epochs"]["loss"]) == 1, text
    # The head stage's epochs=None: 2,000 one-step epochs (2,000 steps of 96 rows), whose checkpoint
    # is written every few seconds, not 2,000 times (4.3 s of the test's 10.9 s).
    assert len(r["head_stage"]["loss"]) == 2000, text


def test_head_mode_with_the_default_epochs_says_when_it_starts_and_ends(work, tmp_path, monkeypatch):
    """An unsupervised method's epochs=None in head mode (it failed: 'epochs must be a positive
    integer, got None'): the epochs its steps make, a line as the training starts and one with its
    time as it ends, and the epochs run in the model's parameters. It runs them all unless
    --patience is given (5 stopped flowers12's 500 at epoch 30-36, validation mAP 0.73 vs 0.82)."""
    from hashsearch.hashing.deep.unsupervised import UnsupervisedDeepHasher

    monkeypatch.setattr(UnsupervisedDeepHasher, "MIN_STEPS", 300)  # 2,000 in all: seconds more
    out = tmp_path / "b.hsm"
    args = ("train", work / "data", "--method", "bihalf", "--bits", "16", "--input-size", "32")
    args += ("--val-fraction", "0.25", "--cache-dir", work / "cache")
    text = run(*args, "--out", out)
    # 72 training images, one batch of 256 an epoch: 300 epochs, all run.
    assert "bihalf: training the hash layer, 300 epochs (300 optimiser steps)...\n" in text, text
    assert "bihalf: trained the hash layer in " in text and "s (300 epochs)\n" in text, text
    r = record(out)
    assert not r["epochs"]["stopped_early"] and r["params"]["epochs"] == len(r["epochs"]["loss"]) == 300
    assert len(r["epochs"]["val_map"]) == 300 and r["val_map"] == max(r["epochs"]["val_map"])
    # --patience given: it stops early.
    text = run(*args, "--out", tmp_path / "p.hsm", "--patience", "5")
    r = record(tmp_path / "p.hsm")
    ran = len(r["epochs"]["loss"])
    assert r["epochs"]["stopped_early"] and r["params"]["epochs"] == ran < 300
    assert f"s ({ran} epochs; stopped early, the best at epoch {r['epochs']['best_epoch']})\n" in text, text


def test_an_existing_model_file_is_replaced_only_with_overwrite(work, tmp_path):
    out = tmp_path / "m.hsm"
    args = ("train", work / "data", "--out", out, "--method", "itq", "--bits", "16", "--input-size", "32")
    run(*args, "--cache-dir", work / "cache")
    before = out.read_bytes()
    text = run(*args, "--cache-dir", work / "cache", "--seed", "1", code=2)
    assert f"--out {out} is an existing file; give another --out, or replace it with --overwrite" in text, text
    assert "training" not in text and out.read_bytes() == before  # refused before training
    text = run(*args, "--cache-dir", work / "cache", "--seed", "1", "--overwrite")
    assert out.read_bytes() != before and record(out)["params"]["seed"] == 1, text


def test_few_images_for_the_code_length_are_warned_about(work, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for f in sorted((work / "data" / "ship").glob("*.jpg"))[:3]:
        shutil.copyfile(f, folder / f.name)
    out = tmp_path / "t.hsm"
    common = ("--method", "itq", "--input-size", "32", "--cache-dir", work / "cache")
    text = run("train", folder, "--out", out, "--bits", "16", *common)
    assert text.count("warning:") == 1, text
    assert "warning: itq fitted 16 bits on 3 images, fewer images than bits: they differ in at most 2 " in text
    assert "fit on at least 16 images, or ask for fewer bits" in text
    text = run("train", work / "data", "--out", tmp_path / "u.hsm", "--bits", "16", *common)
    assert "warning" not in text, text  # 72 training images for 16 bits


def test_a_cluster_count_other_than_the_classes_gets_a_hint_naming_the_spec(work, tmp_path):
    """4 labelled classes and bihalf-spectral's default 10 clusters: one line naming the spec with
    n_clusters=4 (flowers12: mAP 0.8349 with 12 clusters for its 12 species, 0.8135 with 10); none
    when the spec gives n_clusters, or there are no classes."""
    common = ("--bits", "16", "--input-size", "32", "--epochs", "2", "--cache-dir", work / "cache")
    text = run("train", work / "data", "--out", tmp_path / "a.hsm", "-m", "bihalf-spectral", *common)
    hint = [line for line in text.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "4 classes" in hint[0] and "made 10 clusters" in hint[0], text
    assert hint[0].endswith("train with -m 'bihalf-spectral[n_clusters=4]'"), hint
    text = run("train", work / "data", "--out", tmp_path / "b.hsm", "-m", "bihalf-spectral[gamma=2.0]", *common)
    assert "-m 'bihalf-spectral[gamma=2.0,n_clusters=4]'" in text, text
    for spec in ("bihalf-spectral[n_clusters=4]", "bihalf-spectral[n_clusters=6]", "bihalf"):
        text = run("train", work / "data", "--out", tmp_path / f"{spec}.hsm", "-m", spec, *common)
        assert "hint:" not in text, (spec, text)
    text = run("train", _flat(work, tmp_path / "flat"), "--out", tmp_path / "c.hsm", "-m", "bihalf-spectral", *common)
    assert "hint:" not in text, text


def test_ctrl_c_in_the_head_stage_resumes_into_the_uninterrupted_model(trained, work, monkeypatch):
    """Ctrl-C during the third epoch of finetune's head stage (two epochs checkpointed): the message
    says so, and the same command resumes the head stage and ends with the uninterrupted run's model."""
    from hashsearch.experiments import training
    from hashsearch.hashing.deep import DeepHasher

    real, calls = training.validation_map, []

    def interrupted_at_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    out = work / "head-killed.hsm"
    args = ("train", work / "data", "--out", out, "--cache-dir", work / "cache", *TRAIN)
    # The head stage's checkpoint after every epoch (by default at most every few seconds, and these
    # epochs take milliseconds: test_a_checkpoint_written_every_few_seconds_resumes_... tests that).
    monkeypatch.setattr(DeepHasher, "head_checkpoint_seconds", 0.0)
    monkeypatch.setattr(training, "validation_map", interrupted_at_the_third)
    text = run(*args, code=130)
    assert "epoch 2 of the head stage is checkpointed" in text and "run the same command again" in text, text
    assert "feature cache" not in text and text.count("error:") == 1
    monkeypatch.setattr(training, "validation_map", real)
    text = run(*args)
    assert "resumed the head stage after epoch 2" in text, text
    ref, r = record(trained[0]), record(out)
    assert r["head_stage"]["resumed_at"] == 2 and r["epochs"]["resumed_at"] == 0
    for stage in ("head_stage", "epochs"):
        assert r[stage]["loss"] == pytest.approx(ref[stage]["loss"], abs=1e-6)
        assert r[stage]["val_map"] == pytest.approx(ref[stage]["val_map"], abs=1e-6)
    assert _id(out) == _id(trained[0])


def test_a_run_that_fails_before_training_leaves_no_checkpoint(work, tmp_path, monkeypatch):
    from hashsearch.experiments import training

    out = tmp_path / "m.hsm"
    args = ["train", work / "data", "--out", out, "--cache-dir", work / "cache", "--input-size", "32"]
    args += ["--bits", "16", "--epochs", "2", "--method", "hashnet"]
    import torch

    if not torch.cuda.is_available():
        text = run(*args, "--device", "cuda", code=2)
        assert "device='cuda'" in text and "device='cpu'" in text, text
        assert not out.with_name("m.hsm.ckpt").exists()

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "validation_map", interrupted)  # Ctrl-C in the first epoch
    text = run(*args, "--device", "cpu", code=130)
    assert "before the first epoch was checkpointed" in text and not out.with_name("m.hsm.ckpt").exists(), text
    monkeypatch.undo()
    text = run(*args, "--device", "cpu")  # the corrected command is not taken for another training
    assert "resum" not in text and record(out)["epochs"]["loss"], text


def test_a_model_file_fixes_its_options_and_is_named_where_a_collection_belongs(trained, work, tmp_path):
    import socket

    model, photo = trained[0], sorted((work / "data").rglob("*.jpg"))[0]
    coll = tmp_path / "c.hsx"
    # Options the model fixes, given explicitly, are refused together in one line.
    text = run(
        "index", work / "data", "--model", model, "--bits", "64", "--method", "itq", "--input-size", "128",
        "--out", coll, code=2,
    )  # fmt: skip
    assert text.count("error:") == 1 and "fixes --method, --bits, --input-size (" in text, text
    assert not coll.exists()
    # A model file given as a collection says what it is and how a collection is made from it.
    text = run("search", model, photo, code=2)
    assert "is a model file" in text and f"hashsearch index FOLDER --model {model}" in text, text
    # Without them, the model indexes; the hasher's epochs are the ones trained (6 or fewer), not hashnet's 30.
    run("index", work / "data", "--model", model, "--out", coll, "--cache-dir", work / "cache")
    assert json.loads(run("info", coll))["hasher_params"]["epochs"] == len(record(model)["epochs"]["loss"]) <= 6
    # serve with another model than the collection's says what the collection was built by, and what to do.
    plain = tmp_path / "plain.hsx"
    run("index", work / "data", "--method", "lsh", "--bits", "16", "--input-size", "32", "--out", plain)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = run("serve", plain, "--model", model, "--port", port, code=2)
    assert "was built without a trained model" in text and "serve it without --model" in text, text
    assert "same file" not in text and text.count("error:") == 1


def test_train_on_a_protocols_training_split_with_a_recipe(tmp_path):
    out = tmp_path / "f.hsm"
    text = run(
        "train", "--protocol", "flowers12", "--method", "csq", "--bits", "16", "--input-size", "64",
        "--mode", "finetune", "--recipe", "cpu,epochs=2,start_size=32,label_smoothing=0.1", "--out", out,
    )  # fmt: skip
    assert "432 training and 48 validation images, 12 classes" in text
    r = record(out)
    assert r["protocol"] == "flowers12" and r["data"]["train"] == 432
    assert r["recipe"]["schedule"] == "cosine" and r["recipe"]["label_smoothing"] == 0.1
    assert len(r["epochs"]["loss"]) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--protocol", "flowers12", "--mode", "head", "--recipe", "cpu"], "--mode head leave it out"),
        (["--protocol", "flowers12", "--mode", "finetune", "--recipe", "fast"], "recipe 'fast' is not one of"),
        (
            ["--protocol", "flowers12", "--method", "hashnet", "--recipe", "label_smoothing=0.1", "--mode", "finetune"],
            "no class targets",
        ),
        (["SOURCE", "--protocol", "flowers12"], "one of the two"),
        ([], "one of the two"),
        (["SOURCE", "--mode", "finetune", "--recipe", ""], "--recipe '' is empty; give a recipe name (paper, cpu)"),
        (["SOURCE", "--mode", "finetune", "--recipe", " , "], "--recipe ' , ' is empty"),
        (
            ["SOURCE", "--mode", "finetune", "--recipe", "cpu,label_smoothing=0.1"],
            "--recipe label_smoothing=0.1: --method hashnet's loss has no class targets to smooth; use it with csq, "
            "dlbhc",
        ),
        (
            ["SOURCE", "--mode", "finetune", "--recipe", "epochs=0"],
            "--recipe 'epochs=0': epochs='0' is not a whole number >= 1, or none (the method's epochs)",
        ),
        (
            ["SOURCE", "--mode", "finetune", "--recipe", "cpu,start_size=8"],
            "start_size='8' is not a whole number >= 32, or none (full size throughout)",
        ),
    ],
)
def test_train_refuses_a_recipe_it_cannot_use_and_needs_one_source(args, words, work, tmp_path):
    args = [str(work / "data") if a == "SOURCE" else a for a in args]
    text = run("train", *args, "--input-size", "32", "--epochs", "1", "--out", tmp_path / "m.hsm", code=2)
    assert words in text, text
    # One line naming --recipe, the value and what is allowed; refused before any data is read.
    assert text.count("error:") == 1 and "None" not in text and "labels:" not in text, text
    if "--recipe" in args:
        assert "--recipe" in text and "validation images" not in text, text
    assert not (tmp_path / "m.hsm").exists() and not (tmp_path / "m.hsm.ckpt").exists()


def test_the_named_recipes_are_spelled_out_in_train_help():
    """`train --help` shows what each named recipe sets, as endtoend.RECIPES holds it."""
    import inspect

    from hashsearch.cli.train import train
    from hashsearch.hashing.deep.endtoend import RECIPES

    text = inspect.signature(train).parameters["recipe"].default.help
    assert f"paper (the default): {RECIPES['paper'].describe()};" in text, text
    assert f"cpu: paper with {RECIPES['cpu'].describe(RECIPES['paper'])} (" in text, text
    assert set(RECIPES) == {"paper", "cpu"}  # a new named recipe goes into the help text (and docs/models.md)
    # docs/models.md's table of the named recipes holds the same values.
    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for name, recipe in RECIPES.items():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{name}`"))
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
        want = {"epochs": "the method's", "start_size": "full size"}
        assert cells == [
            want[k] if v is None else format(v, "g") if isinstance(v, float) else str(v)
            for k, v in recipe.as_dict().items()
        ], (name, cells)


#: RITQ and DHFI on the fixture: their ResNet-32 trained from scratch for 2 epochs (seconds).
OWN = ["--bits", "16", "--scratch-epochs", "2", "--val-fraction", "0.25", "--device", "cpu", "--seed", "0"]
OWN_RUNS = {
    "ritq": ["--method", "ritq"],
    "dhfi": ["--method", "dhfi", "--input-size", "64", "--epochs", "3"],
    "dhfi-finetune": ["--method", "dhfi", "--input-size", "64", "--mode", "finetune", "--epochs", "2"],
}


@pytest.fixture(scope="module")
def own_networks(work):
    """Models of the methods with networks of their own: {run name: (model path, train's output)}."""
    models = {}
    for name, args in OWN_RUNS.items():
        out = work / f"{name}.hsm"
        models[name] = out, run("train", work / "data", "--out", out, "--cache-dir", work / "cache", *OWN, *args)
    return models


def _header(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("model.json"))


@pytest.mark.slow  # 10-12 s each: make test-distributed
@pytest.mark.parametrize("name", ["ritq", "dhfi-finetune"])
def test_ritq_and_dhfi_models_alone_index_add_and_search_an_unlabelled_folder(
    name, own_networks, work, cifar_small, tmp_path
):
    path, text = own_networks[name]
    header, r = _header(path), record(path)
    assert "trained from scratch: 2 epochs" in text, text
    if name == "ritq":  # its own ResNet-32 is the model's backbone: one network, format version 1
        assert header["version"] == 1 and header["backbone"]["name"] == "cifar-resnet32"
        assert header["backbone"]["input_size"] == 32 and list(r["scratch"]) == ["cifar-resnet32"]
    else:  # the pretrained backbone and the pooled ResNet-32, side by side in that order: version 2
        assert header["version"] == 2 and header["backbone"]["name"] == "efficientnet-lite0+cifar-resnet32-pooled"
        parts = header["backbone"]["parts"]
        assert [(p["name"], p["input_size"], p["feature_dim"]) for p in parts] == [
            ("efficientnet-lite0", 64, 1280),
            ("cifar-resnet32-pooled", 64, 256),
        ]
        assert header["hasher"]["params"]["feature_dims"] == [1280, 256]
        assert set(r["subnets"]) == {"a", "b"} and "subnetwork b: 2 joint epochs" in text, text
        for sub in r["subnets"].values():  # each subnetwork validated on its own codes, each stage
            assert len(sub["epochs"]["val_map"]) == 2 and sub["head_stage"]["val_map"]
    assert 0 < r["val_map"] <= 1 and not path.with_name(path.name + ".ckpt").exists()

    # The model copied alone to another folder, the training data gone, a fresh cache; --cache-dir given.
    model = tmp_path / "elsewhere" / "m.hsm"
    model.parent.mkdir()
    shutil.copyfile(path, model)
    gone = work / "data-gone"
    (work / "data").rename(gone)
    try:
        photos = tmp_path / "photos"
        photos.mkdir()
        for i, f in enumerate(sorted((cifar_small / "test").rglob("*.jpg"))):
            shutil.copyfile(f, photos / f"img{i:03d}.jpg")  # no class folders: no labels
        default, mine = tmp_path / "default-cache", tmp_path / "mine"
        env = {**os.environ, "HASHSEARCH_CACHE": str(default)}
        hs = [sys.executable, "-c", "from hashsearch.cli import main; main()"]

        def cli(*args):
            p = subprocess.run([*hs, *map(str, args)], capture_output=True, text=True, env=env, cwd=model.parent)
            return p.returncode, p.stdout + p.stderr

        code, text = cli("index", photos, "--model", model.name, "--out", "c.hsx", "--cache-dir", mine)
        assert code == 0 and "indexed 40 images" in text and f"model {_id(model)[:12]}" in text, text
        code, text = cli("search", "c.hsx", photos / "img007.jpg", "-k", "40", "--json", "--cache-dir", mine)
        assert code == 0, text
        hits = json.loads(text[text.index("[") :])[0]["results"]
        assert len(hits) == 40 and any(h["path"].endswith("img007.jpg") and h["hamming"] == 0 for h in hits)
        code, text = cli("add", "c.hsx", cifar_small / "train" / "cat", "--cache-dir", mine)
        assert code == 0, text
        # index, search and add unpacked every part's weights into --cache-dir, none into the default cache.
        unpacked = sorted(p.name for p in (mine / "models").iterdir())
        want = [f"{_id(model)}.pt"] if name == "ritq" else [f"{_id(model)}-0.pt", f"{_id(model)}-1.pt"]
        assert unpacked == want and not default.exists()
        code, text = cli("info", "c.hsx")  # (info has no --cache-dir: it unpacks into the default cache)
        assert json.loads(text)["model"]["id"] == _id(model) and json.loads(text)["count"] == 48, text
    finally:
        gone.rename(work / "data")


def test_a_dhfi_model_keeps_its_codes_and_ritq_evaluates_on_a_protocol(own_networks, work, tmp_path):
    from hashsearch.collection import Collection
    from hashsearch.model import TrainedModel

    path, _ = own_networks["dhfi"]
    r = record(path)
    assert r["mode"] == "head" and r["scratch"]["cifar-resnet32-pooled"]["input_size"] == 64
    run("index", _flat(work, tmp_path / "flat"), "--model", path, "--out", tmp_path / "c.hsx")
    coll = Collection.open(tmp_path / "c.hsx")
    # What the collection holds (ONNX Runtime, both networks in one graph) is what the loaded model computes
    # with PyTorch: the codes of the same images agree but for bits whose projection is within rounding of 0.
    model = TrainedModel.load(path)
    bb = model.backbone()
    assert bb.name == coll.backbone.name and bb.cache_key == coll.backbone.cache_key
    from PIL import Image

    entries = coll.entries(range(16))
    crops = np.stack([bb.preprocess.crop(Image.open(e["path"]).convert("RGB")) for e in entries])
    feats = bb.forward(bb.preprocess.normalize(crops))
    # The stored (float16) features are the two networks' side by side, in the model's order.
    np.testing.assert_allclose(coll.features_of(np.arange(16)), feats, rtol=1e-2, atol=1e-2)
    # A query through the loaded model finds its own image at Hamming distance 0 (ties: another too).
    res = coll.search(feats, k=1)
    assert (res.distances[:, 0] == 0).sum() >= 15, res.distances[:, 0]

    text = run("eval", "--model", own_networks["ritq"][0], "--protocol", "flowers12", "--out", tmp_path / "e")
    row = json.loads((tmp_path / "e.json").read_text())["rows"][0]
    assert "flowers12" in text and 0 < row["metrics"]["map"] <= 1 and row["model"]["id"] == _id(own_networks["ritq"][0])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--method", "ritq", "--backbone", "efficientnet-lite1"], "trains its own network (cifar-resnet32)"),
        (["--method", "ritq", "--input-size", "64"], "leave --input-size out"),
        (
            ["--method", "ritq", "--mode", "finetune"],
            "ritq trains its own network (cifar-resnet32) from scratch in head",
        ),
        (["--method", "dhfi", "FLAT"], "dhfi trains its network (cifar-resnet32) from scratch with a classifier"),
        (["--method", "ritq", "--scratch-epochs", "0"], "--scratch-epochs"),
        (["--method", "dhfi", "--input-size", "320"], "--input-size 320: the network trained from scratch"),
    ],
)
def test_ritq_and_dhfi_errors_are_one_line(args, words, work, tmp_path):
    source = work / "data"
    if "FLAT" in args:
        args, source = [a for a in args if a != "FLAT"], _flat(work, tmp_path / "flat")
    text = run("train", source, *args, "--bits", "16", "--out", tmp_path / "m.hsm", code=2)
    assert words in text and text.count("error") == 1 and "Traceback" not in text, text
    assert not (tmp_path / "m.hsm").exists() and not (tmp_path / "m.hsm.ckpt").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA device: --device cuda is tested where torch sees one")
@pytest.mark.parametrize("method", ["hashnet", "ritq"])
def test_train_on_cuda_saves_a_model_that_indexes_on_the_cpu(method, work, tmp_path):
    """Issue 20 part 6: on a GPU, `train --device cuda` (a fine-tuned HashNet; RITQ's ResNet-32 from
    scratch), and the saved model encodes on the CPU, through ONNX Runtime, as PyTorch does."""
    from PIL import Image

    from hashsearch.collection import Collection
    from hashsearch.model import TrainedModel

    out = tmp_path / "gpu.hsm"
    args = ["--method", method, "--bits", "16", "--val-fraction", "0.25", "--device", "cuda", "--seed", "0"]
    args += (
        ["--scratch-epochs", "2"] if method == "ritq" else ["--input-size", "32", "--mode", "finetune", "--epochs", "2"]
    )
    text = run("train", work / "data", "--out", out, "--cache-dir", work / "cache", *args)
    r = record(out)
    assert r["device"] == "cuda" and r["machine"]["gpu"] and 0 < r["val_map"] <= 1, text
    coll_path = tmp_path / "c.hsx"
    run("index", _flat(work, tmp_path / "flat"), "--model", out, "--out", coll_path, "--cache-dir", work / "cache")
    coll = Collection.open(coll_path, cache_dir=work / "cache")
    assert len(coll) == 96 and coll.model_id == _id(out)
    bb = TrainedModel.load(out).backbone(work / "cache")  # the weights as saved, on the CPU
    entries = coll.entries(range(16))
    crops = np.stack([bb.preprocess.crop(Image.open(e["path"]).convert("RGB")) for e in entries])
    feats = bb.forward(bb.preprocess.normalize(crops))
    np.testing.assert_allclose(coll.features_of(np.arange(16)), feats, rtol=1e-2, atol=1e-2)
    assert (coll.search(feats, k=1).distances[:, 0] == 0).sum() >= 15


def test_ctrl_c_while_ritq_trains_its_network_resumes_to_the_same_epochs(own_networks, work, monkeypatch):
    """Issue 20 part 2: RITQ's ResNet-32 trained from scratch is checkpointed every epoch. Ctrl-C
    in its second epoch (one checkpointed): the message says so, and the same command resumes
    after epoch 1 and ends with the uninterrupted run's epochs, losses and model."""
    from hashsearch.hashing.deep import endtoend

    real, calls = endtoend.ImageModel.set_epoch, []

    def interrupted_in_the_second(self, epoch, epochs):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, epochs)

    out = work / "ritq-killed.hsm"
    ckpt = out.with_name(out.name + ".ckpt")
    args = ("train", work / "data", "--out", out, "--cache-dir", work / "cache", *OWN, *OWN_RUNS["ritq"])
    monkeypatch.setattr(endtoend.ImageModel, "set_epoch", interrupted_in_the_second)
    text = run(*args, code=130)
    assert calls == [0, 1] and not out.exists()
    assert "epoch 1 of training the network from scratch is checkpointed" in text, text
    assert (ckpt / "scratch-0-epochs.pt").is_file() and not (ckpt / "scratch-0.pt").exists()
    monkeypatch.setattr(endtoend.ImageModel, "set_epoch", real)
    text = run(*args)
    assert "resuming from the checkpoint" in text and "2 epochs (resumed after epoch 1)" in text, text
    ref, r = record(own_networks["ritq"][0]), record(out)
    assert r["scratch"]["cifar-resnet32"]["resumed_at"] == 1
    assert r["scratch"]["cifar-resnet32"]["loss"] == pytest.approx(ref["scratch"]["cifar-resnet32"]["loss"], abs=1e-6)
    assert _id(out) == _id(own_networks["ritq"][0]) and not ckpt.exists()


def _flowers(dest: Path, classes=("bluebell", "daisy", "iris", "sunflower"), per_class: int = 10) -> Path:
    """`dest/<species>/*.jpg`: the first `per_class` photos of 4 flowers12 species in archive order,
    and the archive's stray README.txt beside them (a real folder has such files)."""
    archive = Path(__file__).resolve().parents[3] / "shared/datasets/flowers12-960.tar.gz"
    taken: dict[str, int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and parts[-1] == "README.txt":
                (dest / "README.txt").parent.mkdir(parents=True, exist_ok=True)
                (dest / "README.txt").write_bytes(tar.extractfile(m).read())
            elif m.isfile() and len(parts) >= 2 and parts[-2] in classes and taken.get(parts[-2], 0) < per_class:
                (dest / parts[-2]).mkdir(parents=True, exist_ok=True)
                (dest / parts[-2] / parts[-1]).write_bytes(tar.extractfile(m).read())
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
    assert sorted(taken.values()) == [per_class] * len(classes) and (dest / "README.txt").is_file()
    return dest


def test_finetuning_that_ends_below_the_head_stage_keeps_the_head_stage(work, tmp_path):
    """Finding 10 and 9: on real photos (where the pretrained network's frozen features are good),
    a joint stage wrecked by a backbone rate 1000 times the head's ends below the head on the
    frozen network; the model kept is the head stage's (the starting network's weights, its
    head), the record and the screen say so, the curve draws both stages, "1 epoch"; the stray
    text file of the flowers archive is named as left out."""
    from hashsearch.backbones import create_backbone
    from hashsearch.model import TrainedModel, _state

    data = _flowers(tmp_path / "data")
    out = tmp_path / "m.hsm"
    text = run(
        "train", data, "--out", out, "--cache-dir", work / "cache", "--method", "hashnet", "--bits", "16",
        "--input-size", "32", "--mode", "finetune", "--epochs", "1", "--val-fraction", "0.25", "--device", "cpu",
        "--recipe", "trunk_lr_scale=1000", "--train-batch", "8",
    )  # fmt: skip
    assert f"1 file not an image (by extension): {data / 'README.txt'}" in text, text
    assert "trained 1 epoch;" in text and "1 epochs" not in text, text
    r = record(out)
    assert r["kept"] == "head" and r["val_map"] == r["frozen_val_map"] > max(r["epochs"]["val_map"]), r
    assert "fine-tuning ended below the head stage" in text and "kept the head stage's model" in text, text
    model = TrainedModel.load(out)
    stock = _state(create_backbone("efficientnet-lite0", input_size=32))
    assert all(np.array_equal(model.weights[k], v) for k, v in stock.items()) and len(model.weights) == len(stock)
    assert model.hasher.epochs == len(r["head_stage"]["loss"])
    # The curve: the head stage's epochs, then the joint stage's one.
    assert out.with_name("m-training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_epoch_in_head_mode_draws_no_one_point_curve(work, tmp_path):
    out = tmp_path / "m.hsm"
    stale = out.with_name("m-training.png")
    stale.write_bytes(b"an earlier run's curve")
    text = run(
        "train", work / "data", "--out", out, "--cache-dir", work / "cache", "--bits", "16", "--input-size", "32",
        "--epochs", "1", "--val-fraction", "0.25",
    )  # fmt: skip
    assert "trained 1 epoch;" in text and "no training curve drawn: 1 epoch" in text, text
    assert "labels: one folder per class; 4 classes" in text and "not an image" not in text, text
    assert not stale.exists() and len(record(out)["epochs"]["loss"]) == 1


def test_eval_warns_when_the_test_images_are_training_images(trained, work, cifar_small, tmp_path):
    """Finding 4: the record lists every training and validation image by content; `eval --model`
    warns in one stderr line when queries are among them, not when they are unseen images, and
    reads a model whose record does not list them (an earlier hashsearch's), saying it cannot check."""
    model = trained[0]
    r = record(model)
    assert len(r["data"]["image_digests"]) == 96 and all(len(d) == 16 for d in r["data"]["image_digests"])

    def evaluate(path, data, out):
        result = runner.invoke(
            app,
            ["eval", "--model", str(path), "--data", str(data), "--queries-per-class", "2", "--cache-dir",
             str(work / "cache"), "--out", str(out)],
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr, json.loads(out.with_suffix(".json").read_text())["rows"][0]

    # Queries drawn from the training folder itself: all 8 were trained or validated on.
    out, err, row = evaluate(model, work / "data", tmp_path / "seen")
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "8 of the 8 query images" in warning[0] and _id(model)[:12] in warning[0], err
    assert "does not measure unseen images" in warning[0] and "warning" not in out
    assert "(the same bytes: airplane/" in warning[0] and "and 5 more)" in warning[0], warning  # 3 named, below --data
    assert row["model"]["training_overlap"] == {"queries": 8, "database": 88}
    assert "8 of 8 queries, 88 of 88 database images" in (tmp_path / "seen.md").read_text()
    # CIFAR-10 test images: none of them was seen.
    out, err, row = evaluate(model, cifar_small / "test", tmp_path / "unseen")
    assert "warning" not in err + out and row["model"]["training_overlap"] == {"queries": 0, "database": 0}

    # A model whose record does not list its images still evaluates, and says the overlap is not checked.
    old = tmp_path / "old.hsm"
    with zipfile.ZipFile(model) as z, zipfile.ZipFile(old, "w") as w:
        for item in z.infolist():
            data = z.read(item)
            if item.filename == "model.json":
                header = json.loads(data)
                del header["training"]["data"]["image_digests"]
                data = json.dumps(header).encode()
            w.writestr(item, data)
    out, err, row = evaluate(old, work / "data", tmp_path / "old")
    assert "warning" not in err and "is not checked" in out and row["model"]["training_overlap"] is None, out + err


def test_a_validation_split_of_one_image_per_class_is_refused(work, tmp_path):
    """Each validation image alone in its class gives no validation mAP (it was printed as "nan at
    epoch None"): refused, with the --val-fraction that holds out 2 of a class."""
    text = run("train", work / "data", "--out", tmp_path / "m.hsm", "--input-size", "32", "--val-fraction", "0.01",
               code=2)  # fmt: skip
    assert "--val-fraction 0.01 holds out at most 1 image of each class" in text, text
    assert "use --val-fraction 0.07 or more" in text and "nan" not in text and text.count("error:") == 1, text
    text = run("train", work / "data", "--out", tmp_path / "m.hsm", "--input-size", "32", "--val-fraction", "0.07",
               "--epochs", "1", "--cache-dir", work / "cache")  # fmt: skip
    assert "88 training and 8 validation images" in text and "nan" not in text, text


def test_dhfi_subnetworks_whose_fine_tuning_ends_below_their_head_stage_keep_it(tmp_path):
    """Finding 10 for DHFI: each subnetwork compares its own stages; a wrecked joint stage (the
    backbone at 30 times the head's rate) keeps the head stage's head and the network as it started."""
    from hashsearch.backbones import create_backbone
    from hashsearch.model import TrainedModel, _state

    out = tmp_path / "d.hsm"
    text = run(
        "train", _flowers(tmp_path / "data"), "--out", out, "--method", "dhfi", "--bits", "16", "--input-size", "64",
        "--mode", "finetune", "--epochs", "1", "--scratch-epochs", "1", "--val-fraction", "0.25", "--device", "cpu",
        "--recipe", "trunk_lr_scale=30", "--train-batch", "8", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    r = record(out)
    for name in ("a", "b"):
        sub = r["subnets"][name]
        assert sub["kept"] == "head" and max(sub["head_stage"]["val_map"]) > max(sub["epochs"]["val_map"]), sub
        assert f"subnetwork {name}: 1 joint epoch, " in text and "kept the head stage" in text, text
    stock = _state(create_backbone("efficientnet-lite0", input_size=64))
    weights = TrainedModel.load(out).weights
    assert all(np.array_equal(weights[f"0.{k}"], v) for k, v in stock.items())

    # At 1000 times, the ResNet's loss diverges: one error line naming the options to lower, not "a bug".
    text = run(
        "train", tmp_path / "data", "--out", tmp_path / "nan.hsm", "--method", "dhfi", "--bits", "16",
        "--input-size", "64", "--mode", "finetune", "--epochs", "1", "--scratch-epochs", "1", "--val-fraction", "0.25",
        "--device", "cpu", "--recipe", "trunk_lr_scale=1000", "--train-batch", "8", "--cache-dir", tmp_path / "cache",
        code=2,
    )  # fmt: skip
    assert (
        "training loss became nan in epoch 1: training diverged; lower --lr (the backbone's: --lr x --recipe " in text
    )
    assert "trunk_lr_scale=1000)" in text and text.count("error:") == 1 and "bug" not in text, text


def test_eval_model_leaves_each_query_out_on_a_leave_one_out_protocol(trained, cifar_small, work, monkeypatch):
    """On a protocol whose database is its query set (the MNIST ones, `Split.leave_one_out`), `eval
    --model` leaves each query's own image out of its ranking, as `eval --method` does: here 40
    real CIFAR-10 test images searched within themselves, in a split made as mnist-table2 makes its own."""
    from hashsearch.data.protocols import Split
    from hashsearch.data.sources import open_source
    from hashsearch.experiments import jobs
    from hashsearch.experiments.training import evaluate_model
    from hashsearch.model import TrainedModel

    source = open_source(str(cifar_small / "test"))
    records = source.records()

    def split(loo):
        return source, Split("test-loo", records[:8], records, records, 0, "40 test images", leave_one_out=loo)

    model = TrainedModel.load(trained[0])
    rows = {}
    for loo in (True, False):
        monkeypatch.setattr(jobs, "load_split", lambda *a, loo=loo, **k: split(loo))
        rows[loo] = evaluate_model(
            model, protocol="test-loo", data=None, queries_per_class=0, seed=0, out=None,
            cache_dir=work / "cache", log=lambda *_: None,
        )["metrics"]  # fmt: skip
    assert rows[True]["n_left_out"] == len(records) == 40 and "n_left_out" not in rows[False]
    # With its own image in the database each query finds it first, so its mAP reads higher.
    assert rows[False]["map"] > rows[True]["map"]


# -- session 7: a fresh user's train -> index --model -> eval --model on a wrapped archive --------


@pytest.fixture(scope="module")
def wrapped(work, tmp_path_factory):
    """`photos.tar.gz` made by `tar czf photos.tar.gz photos` (photos/<species>/*.jpg: 6 real flowers12
    photos of each of 3 species), and an ITQ model trained on it with a parameter in brackets:
    (folder holding both, archive, model, train's output)."""
    root = tmp_path_factory.mktemp("wrapped")
    photos = _flowers(root / "photos", classes=("daisy", "iris", "sunflower"), per_class=6)
    (photos / "README.txt").unlink()
    archive = root / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="photos")
    model = root / "m.hsm"
    text = run(
        "train", archive, "-m", "itq[n_iter=3]", "--bits", "16", "--input-size", "32", "--val-fraction", "0.34",
        "--out", model, "--cache-dir", work / "cache",
    )  # fmt: skip
    return root, archive, model, text


def test_train_takes_method_parameters_and_sees_the_classes_through_a_wrapper(wrapped, work):
    """Findings 1, 4, 3: train read 'itq[n_iter=3]' as an unknown method (index and eval take
    brackets); an archive that wraps its class folders in one folder was trained as ONE class
    ("photos"), and an error said "(1 classes)"; an error of ours read "Invalid value: ..."."""
    from hashsearch.model import TrainedModel

    root, archive, model, text = wrapped
    assert "labels: one folder per class inside photos/, the one folder holding every image" in text, text
    assert "3 classes (daisy 6, iris 6, sunflower 6)" in text and "12 training and 6 validation images" in text
    r = record(model)
    assert r["params"]["n_iter"] == 3 and r["data"]["classes"] == ["daisy", "iris", "sunflower"]
    assert TrainedModel.load(model).hasher.get_params()["n_iter"] == 3
    common = ("--bits", "16", "--input-size", "32", "--cache-dir", work / "cache", "--out", root / "x.hsm")
    for spec, words in (
        ("itq[iterations=20]", "method spec 'itq[iterations=20]': itq has no parameter iterations; it takes n_iter"),
        ("dpsh[device=cpu]", "--method 'dpsh[device=cpu]': give the device with --device, not in the brackets"),
    ):
        out = run("train", archive, "-m", spec, *common, code=2)
        assert out.startswith(f"error: {words}") and out.count("\n") == 1, out
    out = run("train", archive, "-m", "dpsh[lr=0.1]", "--lr", "0.2", *common, code=2)
    assert out.startswith("error: --method 'dpsh[lr=0.1]' and --lr both set lr; give it once"), out
    # --labels folder labels by the wrapper: one class, and a supervised method says so.
    out = run("train", archive, "-m", "dpsh", "--labels", "folder", *common, code=2)
    assert "error: 18 of the 18 images have a label (1 class: photos); dpsh learns from labels of at least 2" in out
    out = run("train", archive, "--out", root, code=2)  # a folder as --out: our sentence, without click's prefix
    assert out.startswith(f"error: --out {root} is a folder; give a model file name") and "Invalid value" not in out


def test_eval_model_on_a_folder_needs_no_training_split(wrapped, work, tmp_path):
    """Finding 2: `eval --model M --data FOLDER` demanded 600 images per class (100 queries + 500
    training images), although a trained model needs no training split: it now draws queries and
    database only, with a number of queries that fits the folder, and says how many."""
    root, archive, model, _ = wrapped
    cache = ("--cache-dir", work / "cache")
    text = run("eval", "--model", model, "--data", archive, *cache, "--out", tmp_path / "e")
    assert "queries: 1 per class (at most 100, and a fifth of the smallest class, daisy with 6;" in text, text
    assert "3 queries, 15 database images" in text and "mAP" in text
    metrics = json.loads((tmp_path / "e.json").read_text())["rows"][0]["metrics"]
    assert metrics["n_queries"] == 3 and metrics["n_database"] == 15
    assert "no training images" in (tmp_path / "e.md").read_text()
    text = run("eval", "--model", model, "--data", root / "photos", "--queries-per-class", "2", *cache)
    assert "6 queries, 12 database images" in text and "queries: " not in text, text
    for args, words in (
        (["--model", model, "--data", archive, "--train-per-class", "2"], f"--train-per-class 2: --model {model} is"),
        (
            ["--model", model, "--data", archive, "--queries-per-class", "6"],
            "class 'daisy' has 6 labelled images, and the split takes --queries-per-class 6 of each class as queries "
            "and 1 more for the database (7 in all); lower --queries-per-class, or add images",
        ),
        (
            ["--model", model, "--protocol", "flowers12", "--queries-per-class", "5"],
            "--protocol flowers12 draws its own split, so --queries-per-class (for --data) would not be used",
        ),
    ):
        errors = [line for line in run("eval", *args, *cache, code=2).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0] and "Invalid value" not in errors[0], errors


def test_info_describes_a_model_and_a_collection_for_a_person(wrapped, work, tmp_path):
    """Finding 5: `info` printed JSON only, and refused a model file. --text (the default on a
    terminal) is a short aligned summary; JSON (--json, or the output piped) is as before."""
    import pty

    from hashsearch.cli.commands import _size

    root, archive, model, _ = wrapped
    text = run("info", "--text", model)
    lines = text.splitlines()
    width = lines[0].index(str(model))
    assert all(line[width - 2 : width] == "  " and line[width] != " " for line in lines), text  # aligned
    for words in (
        f"model        {model}: a trained model (`hashsearch train`), id {_id(model)[:12]}",
        "code length  16 bits",
        "method       itq (n_iter=3)",
        "trained on   18 images of 3 classes (12 training images, 6 held out for validation)",
        "backbone     efficientnet-lite0 at 32 px",
        f"on disk      {_size(model.stat().st_size)}",
        f"created      {record(model)['created_at']}",
    ):
        assert words in text, text
    info = json.loads(run("info", model))  # not a terminal: JSON
    assert info["kind"] == "model" and info["id"] == _id(model) and info["training"]["params"]["n_iter"] == 3
    assert info["training"]["data"]["image_digests"] == 18 and info["size_bytes"] == model.stat().st_size

    coll = tmp_path / "c.hsx"
    run("index", archive, "--model", model, "--out", coll, "--cache-dir", work / "cache")
    more = tmp_path / "more"
    more.mkdir()
    shutil.copyfile(next((root / "photos" / "iris").iterdir()), more / "x.jpg")
    (more / "x.jpg").write_bytes((more / "x.jpg").read_bytes() + b"\0")  # other bytes: not a duplicate
    text = run("add", coll, more, "--cache-dir", work / "cache")
    assert "added 1 entry (id 18); 19 entries now" in text and "ids" not in text, text  # was "ids 18..18"
    text = run("info", "--text", coll)
    for words in (
        f"collection     {coll}: a searchable collection (`hashsearch index`)",
        "images         19 (3 labels: daisy 6, iris 6, sunflower 6, (no label) 1)",
        "method         itq (n_iter=3)",
        f"model          {_id(model)[:12]} (from `hashsearch train`; a copy is inside the collection)",
        "index          flat; features for --rerank: full",
        f"images from    {root} (18 images)",
        f"               {more} (1 image)",
    ):
        assert words in text, text
    disk = next(line for line in text.splitlines() if line.startswith("on disk"))
    assert all(f"{part} " in disk for part in ("(codes", " features", " model", " hasher")), disk
    assert json.loads(run("info", coll))["count"] == 19 == json.loads(run("info", "--json", coll))["count"]
    # On a terminal, the summary is the default.
    parent, child = pty.openpty()
    done = subprocess.run(
        [sys.executable, "-m", "hashsearch", "info", str(coll)], stdout=child, stderr=subprocess.PIPE, timeout=120
    )
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the terminal closed: all read
            break
        if not chunk:
            break
        shown += chunk
    os.close(parent)
    assert done.returncode == 0, done.stderr
    assert b"code length    16 bits" in shown and b'"count"' not in shown, shown


def test_training_options_of_a_method_fitted_in_one_pass_are_refused(work, tmp_path):
    """A fresh user's `train -m itq --epochs 5` ran and ignored --epochs without a word."""
    for spec, given, scratch in (("itq", ["--epochs", "5"], False), ("ritq", ["--lr", "0.1", "--patience", "3"], True)):
        text = run("train", work / "data", "-m", spec, *given, "--out", tmp_path / "m.hsm", code=2)
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"--method {spec} is fitted, not trained by epochs" in errors[0], text
        assert ("--scratch-epochs" in errors[0]) == scratch and " ".join(given[::2]) in errors[0].replace(",", "")
        assert not (tmp_path / "m.hsm").exists()
