"""The trained-model file (hashsearch.model) on real CIFAR-10 images: round trip, damage, and the
collection's model record."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.collection import Collection, CollectionError
from hashsearch.data.sources import open_source
from hashsearch.hashing import create_hasher
from hashsearch.model import ModelError, TrainedModel
from hashsearch.pipeline.local import extract_pixels


@pytest.fixture(scope="module")
def pixels_and_features(cifar_small):
    """32 px crops, labels and EfficientNet-Lite0 features of the 80 training images of `cifar_small`."""
    backbone = create_backbone("efficientnet-lite0", input_size=32)
    source = open_source(cifar_small / "train")
    kept, pixels, _ = extract_pixels(source, source.records(), backbone.preprocess, progress=False)
    features = backbone.forward(backbone.preprocess.normalize(pixels))
    return backbone, pixels, np.array([r.label for r in kept]), features


@pytest.fixture(scope="module")
def finetuned(pixels_and_features, tmp_path_factory):
    """A DPSH model whose backbone was fine-tuned (1 epoch) on the real images: weights unlike the stock ones."""
    backbone, pixels, labels, _ = pixels_and_features
    tmp = tmp_path_factory.mktemp("ft")
    hasher = create_hasher("dpsh", n_bits=16, epochs=2, batch_size=40)
    tuned = hasher.finetune(backbone, pixels, labels, tmp / "w.pt", epochs=1, progress=False)
    return TrainedModel.from_trained(tuned, hasher, {"method": "dpsh", "mode": "finetune"})


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Where a loaded model unpacks its weights for the backbone: a fresh folder per test.
    monkeypatch.setenv("HASHSEARCH_CACHE", str(tmp_path / "cache"))


def test_save_load_round_trip_gives_identical_features_and_codes(finetuned, pixels_and_features, tmp_path):
    _, pixels, _, _ = pixels_and_features
    path = finetuned.save(tmp_path / "m.hsm")
    back = TrainedModel.load(path)
    assert back.id == finetuned.id and back.record == finetuned.record
    assert back.preprocess == finetuned.preprocess and back.backbone_name == "efficientnet-lite0"
    # The loaded backbone computes exactly the fine-tuned network's features, and the hasher the same codes.
    tuned_bb = create_backbone("efficientnet-lite0", input_size=32)
    before = finetuned.backbone(tmp_path / "a")
    after = back.backbone(tmp_path / "b")
    batch = tuned_bb.preprocess.normalize(pixels[:16])
    fa, fb = before.forward(batch), after.forward(batch)
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, tuned_bb.forward(batch), atol=1e-3)  # fine-tuning changed the network
    np.testing.assert_array_equal(finetuned.hasher.encode(fa).data, back.hasher.encode(fb).data)
    # The file holds no pickle: every array member loads with allow_pickle=False.
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["backbone.npz", "hasher.npz", "model.json"]
        header = json.loads(z.read("model.json"))
    assert header["format"] == "hashsearch-model" and header["id"] == finetuned.id


def test_the_id_names_the_content_not_the_file(pixels_and_features, tmp_path):
    backbone, _, labels, features = pixels_and_features
    hasher = create_hasher("itq", n_bits=16).fit(features)
    a = TrainedModel.from_trained(backbone, hasher, {"note": "a"})
    a.save(tmp_path / "a.hsm")
    again = TrainedModel.load(tmp_path / "a.hsm")
    again.save(tmp_path / "b.hsm")  # other zip timestamps, same content
    assert TrainedModel.load(tmp_path / "b.hsm").id == a.id
    other = TrainedModel.from_trained(backbone, create_hasher("itq", n_bits=16, seed=1).fit(features))
    assert other.id != a.id


def test_a_damaged_or_foreign_model_file_is_refused(pixels_and_features, tmp_path):
    backbone, _, _, features = pixels_and_features
    path = TrainedModel.from_trained(backbone, create_hasher("lsh", n_bits=16).fit(features)).save(tmp_path / "m.hsm")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights
    bad = tmp_path / "bad.hsm"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="bad.hsm"):
        TrainedModel.load(bad)
    with pytest.raises(ModelError, match="not a readable hashsearch model"):
        TrainedModel.load(_write(tmp_path / "x.hsm", b"not a zip"))
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    header = json.loads(parts["model.json"])
    header["version"] = 99
    newer = tmp_path / "newer.hsm"
    with zipfile.ZipFile(newer, "w") as z:
        for n, b in parts.items():
            z.writestr(n, json.dumps(header) if n == "model.json" else b)
    with pytest.raises(ModelError, match="version 99"):
        TrainedModel.load(newer)
    with pytest.raises(ModelError, match="not found"):
        TrainedModel.load(tmp_path / "missing.hsm")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_collection_keeps_its_model_and_refuses_codes_of_another(finetuned, pixels_and_features, tmp_path):
    backbone, pixels, labels, features = pixels_and_features
    finetuned.save(tmp_path / "ft.hsm")
    model = TrainedModel.load(tmp_path / "ft.hsm")
    bb = model.backbone()
    feats = bb.forward(bb.preprocess.normalize(pixels[:20]))
    coll = Collection.create(bb, model.hasher)
    coll.use_model(model)
    keys = [str(tmp_path / f"{i}.jpg") for i in range(20)]
    coll.add(feats[:10], keys[:10], labels[:10], model_id=model.id)

    stock = TrainedModel.from_trained(backbone, create_hasher("itq", n_bits=16).fit(features))
    with pytest.raises(CollectionError) as e:
        coll.add(feats[10:], keys[10:], model_id=stock.id)
    assert model.id[:12] in str(e.value) and stock.id[:12] in str(e.value)
    with pytest.raises(CollectionError, match="no trained model"):
        coll.add(feats[10:], keys[10:], model_id=None)
    assert len(coll) == 10

    coll.save(tmp_path / "c.hsx")
    (tmp_path / "ft.hsm").unlink()  # the collection holds its own copy
    back = Collection.open(tmp_path / "c.hsx")
    assert back.model_id == model.id and back.info()["model"]["id"] == model.id
    assert back.backbone.cache_key == bb.cache_key
    # Its queries go through the model: the stored images find themselves at distance 0.
    res = back.search(back.backbone.forward(bb.preprocess.normalize(pixels[:10])), k=1)
    assert (res.distances[:, 0] == 0).all()
    with pytest.raises(CollectionError, match=stock.id[:12]):
        back.add(feats[10:], keys[10:], model_id=stock.id)

    # A collection built without a model refuses a model's codes, naming both sides.
    plain = Collection.create(backbone, create_hasher("itq", n_bits=16).fit(features))
    with pytest.raises(CollectionError, match="no trained model"):
        plain.add(features[:3], keys[:3], model_id=model.id)


@pytest.fixture(scope="module")
def two_networks(pixels_and_features, tmp_path_factory):
    """DHFI's pair at 32 px (EfficientNet-Lite0 and a seeded ResNet-32 whose pooling is 1) and a DHFI
    hasher fitted on their features of the real images."""
    import torch

    from hashsearch.backbones import ConcatBackbone

    lite0, pixels, labels, _ = pixels_and_features
    torch.manual_seed(0)
    resnet = create_backbone("cifar-resnet32-pooled", input_size=32)
    w = resnet.save_weights(resnet.init_module(), tmp_path_factory.mktemp("resnet") / "w.pt")
    resnet = create_backbone("cifar-resnet32-pooled", input_size=32, weights=w)
    pair = ConcatBackbone([lite0, resnet])
    feats = pair.forward(pair.preprocess.normalize(pixels))
    hasher = create_hasher("dhfi", n_bits=16, epochs=2, feature_dims=list(pair.feature_dims)).fit(feats, labels)
    return pair, hasher, feats


def test_a_model_of_two_networks_round_trips_with_identical_features_and_codes(
    two_networks, pixels_and_features, tmp_path
):
    from hashsearch.backbones import ConcatBackbone

    pair, hasher, feats = two_networks
    lite0, pixels, _, _ = pixels_and_features
    # The pair's features are each network's on its own normalisation, side by side in order.
    batch = pair.preprocess.normalize(pixels[:16])
    np.testing.assert_array_equal(feats[:16, :1280], lite0.forward(batch))
    resnet = pair.parts[1]
    np.testing.assert_allclose(feats[:16, 1280:], resnet.forward(resnet.preprocess.normalize(pixels[:16])), atol=1e-4)

    model = TrainedModel.from_trained(pair, hasher, {"method": "dhfi"})
    path = model.save(tmp_path / "pair.hsm")
    with zipfile.ZipFile(path) as z:
        header = json.loads(z.read("model.json"))
        assert sorted(z.namelist()) == ["backbone.npz", "hasher.npz", "model.json"]
    assert header["version"] == 2 and [p["name"] for p in header["backbone"]["parts"]] == [
        "efficientnet-lite0",
        "cifar-resnet32-pooled",
    ]
    back = TrainedModel.load(path)
    assert back.id == model.id and back.backbone_name == "efficientnet-lite0+cifar-resnet32-pooled"
    bb = back.backbone(tmp_path / "cache")
    assert isinstance(bb, ConcatBackbone) and bb.name == pair.name and bb.feature_dims == (1280, 256)
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [f"{model.id}-0.pt", f"{model.id}-1.pt"]
    got = bb.forward(batch)
    np.testing.assert_array_equal(got, feats[:16])
    np.testing.assert_array_equal(back.hasher.encode(got).data, hasher.encode(feats[:16]).data)
    # One network is still written as version 1 (what an older hashsearch reads).
    one = TrainedModel.from_trained(lite0, create_hasher("lsh", n_bits=16).fit(feats[:, :1280])).save(
        tmp_path / "1.hsm"
    )
    with zipfile.ZipFile(one) as z:
        assert json.loads(z.read("model.json"))["version"] == 1


def test_a_model_of_two_networks_refuses_a_changed_part(two_networks, tmp_path):
    pair, hasher, _ = two_networks
    path = TrainedModel.from_trained(pair, hasher).save(tmp_path / "pair.hsm")
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    header = json.loads(parts["model.json"])
    header["backbone"]["parts"][1]["name"] = "cifar-resnet32"  # another network in place of the pooled one
    changed = tmp_path / "changed.hsm"
    with zipfile.ZipFile(changed, "w") as z:
        for n, b in parts.items():
            z.writestr(n, json.dumps(header) if n == "model.json" else b)
    with pytest.raises(ModelError, match="changed.hsm is damaged: its content gives model id"):
        TrainedModel.load(changed)


def test_a_collection_opened_with_a_cache_dir_unpacks_its_model_there(finetuned, pixels_and_features, tmp_path):
    _, pixels, labels, _ = pixels_and_features
    model = TrainedModel.load(finetuned.save(tmp_path / "ft.hsm"))
    bb = model.backbone(tmp_path / "first")
    coll = Collection.create(bb, model.hasher)
    coll.use_model(model)
    coll.add(bb.forward(bb.preprocess.normalize(pixels[:4])), [str(tmp_path / f"{i}.jpg") for i in range(4)])
    coll.save(tmp_path / "c.hsx")
    back = Collection.open(tmp_path / "c.hsx", cache_dir=tmp_path / "mine")
    assert back.model_id == model.id
    assert [p.name for p in (tmp_path / "mine" / "models").iterdir()] == [f"{model.id}.pt"]
    assert not (tmp_path / "cache").exists()  # $HASHSEARCH_CACHE: untouched


def test_a_head_mode_model_shares_the_stock_backbones_feature_cache(pixels_and_features, finetuned, tmp_path):
    """A model trained in head mode carries the packaged weights unchanged: its backbone is the stock one (same
    cache key), so `index --model` on a folder indexed before extracts nothing again (a fresh user's recomputed
    all 959 photos). A fine-tuned backbone keeps a key of its own."""
    backbone, _, labels, features = pixels_and_features
    head = TrainedModel.from_trained(backbone, create_hasher("itq", n_bits=16).fit(features), {"mode": "head"})
    head.save(tmp_path / "head.hsm")
    loaded = TrainedModel.load(tmp_path / "head.hsm").backbone(tmp_path / "c")
    assert loaded.cache_key == backbone.cache_key and loaded.weights_path == backbone.weights_path
    assert not (tmp_path / "c" / "models").exists()  # nothing unpacked: the packaged file is used
    np.testing.assert_array_equal(
        TrainedModel.load(tmp_path / "head.hsm").hasher.encode(features).data, head.hasher.encode(features).data
    )
    assert finetuned.backbone(tmp_path / "d").cache_key != backbone.cache_key
