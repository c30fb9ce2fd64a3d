"""The runner's method specs and the features it hands to methods defined on several backbones."""

from __future__ import annotations

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


def test_finetune_mode_evaluates_on_the_fine_tuned_backbone(small_provider):
    rows = run_methods(small_provider, ["dpsh[epochs=2,batch_size=40]"], [8], mode="finetune", log=lambda *_: None)
    (row,) = rows
    assert row["method"] == "dpsh[epochs=2,batch_size=40] (finetune)" and row["mode"] == "finetune"
    assert len(row["loss_history"]) == 4 and row["timings"]["fit_s"] > 0  # 2 epochs of the head alone, 2 joint
    assert 0 <= row["metrics"]["map"] <= 1
    with pytest.raises(ValueError, match="no finetune mode"):
        run_methods(small_provider, ["itq"], [8], mode="finetune", log=lambda *_: None)


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
