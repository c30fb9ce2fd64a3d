"""The runner's method specs and the features it hands to methods defined on several backbones."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from hashsearch.experiments import Part, ProtocolFeatures, concat_features, parse_method, run_methods


def _feats(dim: int, digests: list[str], seed: int) -> ProtocolFeatures:
    g = np.random.default_rng(seed)

    def part(ds):
        return Part(g.normal(size=(len(ds), dim)).astype(np.float32), np.arange(len(ds)) % 2, list(ds), list(ds))

    return ProtocolFeatures(part(digests), part(digests[:4]), part(digests), ["a", "b"])


def test_parse_method_reads_bracketed_parameters():
    assert parse_method("itq") == ("itq", {})
    assert parse_method("dfeh[lambda_q=0,lambda_b=0.1,use_contrastive=false]") == (
        "dfeh",
        {"lambda_q": 0, "lambda_b": 0.1, "use_contrastive": False},
    )
    assert parse_method("dhfi[use=b]") == ("dhfi", {"use": "b"})
    with pytest.raises(ValueError, match="nope"):
        parse_method("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("itq[7]")


def test_concat_features_keeps_the_images_every_backbone_read_in_order():
    a = _feats(3, list("abcdef"), 0)
    b = _feats(2, list("abcdef"), 1)
    b.train = Part(
        b.train.features[1:], b.train.labels[1:], b.train.records[1:], b.train.digests[1:]
    )  # 'a' failed here
    c = concat_features([a, b])
    assert c.train.digests == list("bcdef")
    np.testing.assert_array_equal(c.train.features[:, :3], a.train.features[1:])
    np.testing.assert_array_equal(c.train.features[:, 3:], b.train.features)
    assert c.database.features.shape == (6, 5)


def test_methods_on_other_backbones_need_a_provider():
    with pytest.raises(ValueError, match="FeatureProvider"):
        run_methods(_feats(8, list("abcdefgh"), 0), ["ritq"], [4], log=lambda *_: None)


def test_rows_are_named_by_the_spec():
    rows = run_methods(_feats(8, list("abcdefgh"), 0), ["itq", "lsh[seed=3]"], [4], log=lambda *_: None)
    assert [r["method"] for r in rows] == ["itq", "lsh[seed=3]"]
    assert rows[1]["params"]["seed"] == 3


@pytest.fixture(scope="module")
def small_provider(cifar_small, tmp_path_factory):
    """A FeatureProvider over the 120 `cifar_small` images (2 queries, 8 training images per class)."""
    from hashsearch.backbones import create_backbone
    from hashsearch.data.protocols import split_by_class
    from hashsearch.data.sources import open_source
    from hashsearch.experiments import FeatureProvider

    source = open_source(cifar_small)
    split = split_by_class(source.records(), 2, 8, seed=0, name="small")
    return FeatureProvider(
        source,
        split,
        create_backbone("efficientnet-lite0", input_size=32),
        cache_dir=tmp_path_factory.mktemp("cache"),
        scratch_epochs=2,
        log=lambda *_: None,
    )


def test_provider_trains_the_cifar_resnet_for_ritq_and_concatenates_for_dhfi(small_provider):
    rows = run_methods(small_provider, ["ritq", "dhfi[epochs=2]"], [8], log=lambda *_: None)
    assert [r["method"] for r in rows] == ["ritq", "dhfi[epochs=2]"]
    assert rows[1]["params"]["feature_dims"] == [1280, 256]
    assert set(small_provider.trained) == {"cifar-resnet32"}
    info = small_provider.trained["cifar-resnet32"]
    assert info["epochs"] == 2 and info["images"] == 80 and len(info["loss"]) == 2
    # a second provider on the same cache reuses the trained weights instead of training again
    again = type(small_provider)(
        small_provider.source,
        small_provider.split,
        small_provider.backbone,
        cache_dir=small_provider.cache_dir,
        scratch_epochs=2,
        log=pytest.fail,
    )
    assert again.trained_backbone("cifar-resnet32").weights == info["weights"]


def test_dhfi_finetune_mode_tunes_both_networks_and_reuses_them_from_the_cache(small_provider):
    spec = "dhfi[epochs=1,batch_size=40]"
    (row,) = run_methods(small_provider, [spec], [8], mode="finetune", log=lambda *_: None)
    assert row["method"] == f"{spec} (finetune)" and row["params"]["feature_dims"] == [1280, 256]
    assert len(row["loss_history"]) == 2 and 0 <= row["metrics"]["map"] <= 1
    folder = small_provider.cache_dir / "backbones"
    tuned = sorted(p.name for p in folder.iterdir() if f"-{spec}-8-" in p.name and p.suffix == ".pt")
    assert len(tuned) == 2 and tuned[0].endswith("-0.pt") and tuned[1].endswith("-1.pt"), tuned
    # the second run reads the tuned networks and the hasher back: same codes, no training
    said = []
    (again,) = run_methods(small_provider, [spec], [8], mode="finetune", log=said.append)
    assert not any(m.startswith(("fine-tuning", "training")) for m in said), said
    assert again["metrics"] == row["metrics"] and again["timings"]["fit_s"] == pytest.approx(row["timings"]["fit_s"])


#: A bench-like run in a child process (what `hashsearch bench` does with its FeatureProvider):
#: argv: the images, the cache folder, and "scratch" (train the CIFAR ResNet) or a finetune method spec.
_CHILD = """
import sys
from hashsearch.backbones import create_backbone
from hashsearch.data.protocols import split_by_class
from hashsearch.data.sources import open_source
from hashsearch.experiments import FeatureProvider, run_methods

root, cache, what = sys.argv[1:4]
source = open_source(root)
split = split_by_class(source.records(), 2, 8, seed=0, name="small")
provider = FeatureProvider(
    source, split, create_backbone("efficientnet-lite0", input_size=32), cache_dir=cache, scratch_epochs=2,
    log=lambda *_: None,
)
if what == "scratch":
    provider.trained_backbone("cifar-resnet32")
else:
    run_methods(provider, [what], [8], mode="finetune", log=lambda *_: None)
"""


def _kill_once_written(args: list, path_of, timeout: float = 300) -> None:
    """Run `_CHILD` with `args`; SIGKILL it as soon as a file `path_of()` returns exists."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *map(str, args)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while (found := path_of()) is None:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no handler runs, as when a machine or a job scheduler stops the run
    finally:
        proc.wait()
    assert proc.returncode == -9 and found.is_file(), (proc.returncode, found)


def _state(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_killed_bench_resumes_training_from_scratch_and_ends_as_the_uninterrupted_run(
    small_provider, cifar_small, tmp_path
):
    ref = small_provider.trained_backbone("cifar-resnet32")  # trained uninterrupted (or read back)
    ref_info = small_provider.trained["cifar-resnet32"]
    cache = tmp_path / "cache"
    folder = cache / "backbones"

    def checkpoint():
        return next(iter(folder.glob("cifar-resnet32-small-seed0-2ep-epochs.ckpt")), None)

    _kill_once_written([cifar_small, cache, "scratch"], checkpoint)
    assert _state(checkpoint())["history"]["epoch_loss"][:1] == pytest.approx(ref_info["loss"][:1], rel=1e-4)
    assert not (folder / "cifar-resnet32-small-seed0-2ep.json").exists()  # killed before the end

    said: list[str] = []
    again = type(small_provider)(
        small_provider.source,
        small_provider.split,
        small_provider.backbone,
        cache_dir=cache,
        scratch_epochs=2,
        log=said.append,
    )
    resumed = again.trained_backbone("cifar-resnet32")
    info = again.trained["cifar-resnet32"]
    assert "resuming from the checkpoint" in said[0] and "resumed after epoch 1" in said[-1], said
    assert info["resumed_at"] == 1 and info["epochs"] == 2 and len(info["loss"]) == 2
    assert info["loss"] == pytest.approx(ref_info["loss"], rel=1e-4)
    a, b = _state(resumed.weights), _state(ref.weights)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert checkpoint() is None  # deleted once the weights are kept
    assert json.loads((folder / "cifar-resnet32-small-seed0-2ep.json").read_text())["resumed_at"] == 1


def test_finetune_mode_resumes_a_killed_run_in_its_joint_stage_and_evaluates_on_the_tuned_backbone(
    small_provider, cifar_small, tmp_path
):
    """A bench-like finetune run killed (SIGKILL) after its first joint epoch resumes from its
    checkpoints, runs the epochs it had left, and evaluates on the fine-tuned backbone."""
    spec = "dpsh[epochs=2,batch_size=40]"
    cache = tmp_path / "cache"
    folder = cache / "backbones"

    def joint():
        return next(iter(folder.glob(f"*-{glob.escape(spec)}-8-*-joint.ckpt")), None)

    _kill_once_written([cifar_small, cache, spec], joint)
    assert len(_state(joint())["history"]["epoch_loss"]) == 1  # after the first of 2 joint epochs
    (head,) = folder.glob("*-head.ckpt")  # the head stage's, kept until the hasher is
    head_loss = _state(head)["history"]["epoch_loss"]
    assert len(head_loss) == 2

    said: list[str] = []
    provider = type(small_provider)(
        small_provider.source, small_provider.split, small_provider.backbone, cache_dir=cache, log=said.append
    )
    (row,) = run_methods(provider, [spec], [8], mode="finetune", log=lambda *_: None)
    assert "(resuming from the checkpoints in" in said[0], said
    assert said[-1].endswith("resumed the head stage after epoch 2, the joint stage after epoch 1"), said
    assert row["method"] == f"{spec} (finetune)" and row["mode"] == "finetune"
    # 2 epochs of the head alone (read back, not run again), 2 joint (the second run here), as uninterrupted
    assert len(row["loss_history"]) == 4 and row["loss_history"][:2] == pytest.approx(head_loss, rel=1e-6)
    assert row["timings"]["fit_s"] > 0 and 0 <= row["metrics"]["map"] <= 1
    (info,) = folder.glob(f"*-{glob.escape(spec)}-8-*.json")
    assert json.loads(info.read_text())["resumed_at"] == {"head": 2, "joint": 1}
    assert not list(folder.glob("*.ckpt")) and not list(folder.glob("*.tmp"))  # deleted once the hasher is kept
    with pytest.raises(ValueError, match="no finetune mode"):
        run_methods(small_provider, ["itq"], [8], mode="finetune", log=lambda *_: None)


def test_the_fine_tuning_line_gives_the_epochs_an_unsupervised_method_runs(small_provider):
    """An unsupervised preset's epochs=None means epochs derived from the number of images
    (`UnsupervisedDeepHasher`): the line states them, not "None"."""
    from hashsearch.hashing.deep.unsupervised import UnsupervisedDeepHasher

    class Said(Exception):
        pass

    def stop_at_the_line(line: str) -> None:
        if line.startswith("fine-tuning"):
            raise Said(line)

    steps = -(-80 // 256)  # 80 training images in batches of 256 (bihalf's default)
    head = max(UnsupervisedDeepHasher.MIN_EPOCHS, -(-UnsupervisedDeepHasher.MIN_STEPS // steps))
    assert head == 2000
    for finetune_epochs, joint in ((None, head), (3, 3)):
        provider = type(small_provider)(
            small_provider.source,
            small_provider.split,
            small_provider.backbone,
            cache_dir=small_provider.cache_dir,
            finetune_epochs=finetune_epochs,
            log=stop_at_the_line,
        )
        with pytest.raises(Said) as said:
            run_methods(provider, ["bihalf"], [8], mode="finetune", log=lambda *_: None)
        line = str(said.value)
        assert "None" not in line, line
        assert f"on 80 images: the head alone {head} epochs, then with the backbone {joint} epochs" in line, line
