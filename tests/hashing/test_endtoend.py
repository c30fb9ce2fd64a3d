"""Training through the backbone: the CIFAR ResNet from scratch (RITQ), "finetune" mode, RITQ and DHFI on real images."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import open_source
from hashsearch.hashing import create_hasher
from hashsearch.hashing.deep.endtoend import Recipe
from hashsearch.pipeline.local import extract_pixels


@pytest.fixture(scope="module")
def small_pixels(cifar_small):
    """32 px uint8 crops and labels of the 80 train and 40 test images of `cifar_small`."""
    source = open_source(cifar_small)
    pre = create_backbone("cifar-resnet32").preprocess
    out = {}
    for split in ("train", "test"):
        records = [r for r in source.records() if r.key.split("/")[-3] == split]
        kept, pixels, report = extract_pixels(source, records, pre, progress=False)
        assert len(report) == 0 and len(kept) == len(records)
        out[split] = (pixels, np.array([r.label for r in kept]))
    return out


@pytest.fixture(scope="module")
def trained_resnet(small_pixels, tmp_path_factory):
    from hashsearch.hashing.deep.endtoend import train_backbone

    pixels, labels = small_pixels["train"]
    path = tmp_path_factory.mktemp("rn") / "cifar-resnet32.pt"
    backbone, history = train_backbone(
        create_backbone("cifar-resnet32"), pixels, labels, path, epochs=30, batch_size=40, progress=False
    )
    return backbone, history


def test_random_crop_flip_returns_padded_crops_or_their_mirror_images():
    import torch
    import torch.nn.functional as F

    from hashsearch.hashing.deep.endtoend import random_crop_flip

    torch.manual_seed(0)
    x = torch.arange(16 * 3 * 8 * 8, dtype=torch.float32).view(16, 3, 8, 8)
    y = random_crop_flip(x)
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    flipped = 0
    for i in range(len(x)):
        crops = [p[i, :, a : a + 8, b : b + 8] for a in range(3) for b in range(3)]
        plain = any(torch.equal(c, y[i]) for c in crops)
        mirror = any(torch.equal(c.flip(-1), y[i]) for c in crops)
        assert plain or mirror, i
        flipped += mirror and not plain
    assert 0 < flipped < len(x)


def test_cifar_resnet_needs_weights_and_says_how_to_get_them():
    with pytest.raises(FileNotFoundError, match="train_backbone"):
        _ = create_backbone("cifar-resnet32").weights_path


def test_resnet_from_scratch_learns_and_its_weights_file_loads_as_a_backbone(trained_resnet, small_pixels):
    import torch

    from hashsearch.hashing.deep.endtoend import trunk_features

    backbone, history = trained_resnet
    assert history.epoch_loss[-1] < 0.7 * history.epoch_loss[0], history.epoch_loss
    pixels = small_pixels["test"][0]
    feats = backbone.forward(backbone.preprocess.normalize(pixels))
    assert feats.shape == (len(pixels), 256)
    again = trunk_features(backbone.torch_module(), pixels, backbone.preprocess, torch.device("cpu"))
    np.testing.assert_allclose(feats, again, rtol=1e-4, atol=1e-4)
    assert backbone.cache_key.startswith("cifar-resnet32-32px-")


def test_ritq_on_resnet_features_beats_lsh_on_them(trained_resnet, small_pixels, real_map):
    """Among the 80 images the ResNet was trained on (80 images are too few for it to generalise
    to unseen ones; the cifar10-1k bench measures that), RITQ's codes keep its class structure
    better than LSH's on the same features."""
    backbone, _ = trained_resnet
    pixels, y = small_pixels["train"]
    X = backbone.forward(backbone.preprocess.normalize(pixels))
    h = create_hasher("ritq", n_bits=32).fit(X)
    assert h.quantization_loss_[-1] < h.quantization_loss_[0]
    lsh = np.mean([real_map(create_hasher("lsh", n_bits=32, seed=s).fit(X), X, y, X, y) for s in range(5)])
    ours = real_map(h, X, y, X, y)
    assert ours > lsh + 0.02, (ours, lsh)


def test_dhfi_fuses_two_subnetworks_and_beats_lsh(cifar_features, real_map):
    X, y, Xq, yq = cifar_features
    h = create_hasher("dhfi", n_bits=32, epochs=15, batch_size=40, feature_dims=(640, 640)).fit(X, y)
    assert h.loss_history_[-1] < h.loss_history_[0]
    codes = h.encode(Xq)
    assert codes.n_bits == 32
    alone = create_hasher("dhfi", n_bits=32, epochs=15, batch_size=40, feature_dims=(640, 640), use="a").fit(X, y)
    # the fused code's first 16 bits are subnetwork a's own code
    a16 = create_hasher("dpsh", n_bits=16, epochs=15, batch_size=40).fit(X[:, :640], y)
    np.testing.assert_array_equal(codes.to_bits()[:, :16], a16.encode(Xq[:, :640]).to_bits())
    lsh = np.mean([real_map(create_hasher("lsh", n_bits=32, seed=s).fit(X), Xq, yq, X, y) for s in range(5)])
    assert real_map(h, Xq, yq, X, y) > lsh + 0.1
    assert alone.encode(Xq).n_bits == 32
    with pytest.raises(ValueError, match="feature_dims"):
        create_hasher("dhfi", n_bits=8, feature_dims=(10, 10)).fit(X, y)


@pytest.mark.parametrize("name", ["dpsh", "csq"])
def test_finetune_mode_trains_the_backbone_through_the_same_loss(name, small_pixels, trained_resnet, tmp_path):
    """finetune: loss decreases, the backbone's weights change, and the hasher encodes the
    returned backbone's features exactly as the jointly trained model scores them."""
    import torch

    from hashsearch.hashing.deep.endtoend import ImageModel

    start, _ = trained_resnet
    pixels, labels = small_pixels["train"]
    h = create_hasher(name, n_bits=16, epochs=6, batch_size=40, lr=1e-3)
    # The 80-image ResNet is barely trained: let its batch norm adapt as in training from scratch.
    tuned = h.finetune(
        start, pixels, labels, tmp_path / "tuned.pt", recipe=Recipe(trunk_lr_scale=0.5), pretrained=False
    )
    head_only, joint = h.loss_history_[:6], h.loss_history_[6:]  # the head alone first, then with the backbone
    assert len(joint) == 6 and head_only[-1] < head_only[0] and joint[-1] < joint[0], h.loss_history_
    assert tuned.weights_sha256 != start.weights_sha256
    feats = tuned.forward(tuned.preprocess.normalize(pixels))
    model = ImageModel(tuned.torch_module(), h.to_torch(), tuned.preprocess, h.feature_mean_, h.feature_std_).eval()
    with torch.no_grad():
        z = model(torch.from_numpy(pixels)).pre_activation.numpy()
    agree = (h.encode(feats).to_bits().astype(bool) == (z >= 0)).mean()
    assert agree > 0.999, agree
    h2 = type(h).load(_saved(h, tmp_path))
    np.testing.assert_array_equal(h2.encode(feats).data, h.encode(feats).data)


def test_finetune_runs_on_the_pretrained_efficientnet(small_pixels, tmp_path, cifar_small):
    """The pretrained backbone fine-tunes too, and its weights file round-trips (small: 32 px, 2 epochs)."""
    source = open_source(cifar_small)
    backbone = create_backbone("efficientnet-lite0", input_size=32)
    records = [r for r in source.records() if r.key.split("/")[-3] == "train"][:40]
    _, pixels, _ = extract_pixels(source, records, backbone.preprocess, progress=False)
    labels = [r.label for r in records]
    h = create_hasher("dlbhc", n_bits=16, epochs=2, batch_size=20)
    tuned = h.finetune(backbone, pixels, labels, tmp_path / "effnet.pt")
    assert tuned.weights == str(tmp_path / "effnet.pt")
    assert tuned.forward(tuned.preprocess.normalize(pixels[:4])).shape == (4, 1280)
    assert h.encode(tuned.forward(tuned.preprocess.normalize(pixels[:4]))).n_bits == 16


def test_dhfi_finetune_trains_each_network_with_its_own_subnetwork(small_pixels, trained_resnet, tmp_path, cifar_small):
    """DHFI's finetune mode: both networks fine-tuned (each by its DPSH subnetwork), the fused
    code encodes their features side by side; with one subnetwork in use, the other network
    is left as it came."""
    source = open_source(cifar_small)
    effnet = create_backbone("efficientnet-lite0", input_size=32)
    records = [r for r in source.records() if r.key.split("/")[-3] == "train"][:40]
    _, eff_pixels, _ = extract_pixels(source, records, effnet.preprocess, progress=False)
    resnet, _ = trained_resnet
    rn_pixels = small_pixels["train"][0][:40]
    labels = [r.label for r in records]
    np.testing.assert_array_equal(labels, small_pixels["train"][1][:40])  # the same 40 images, same order
    h = create_hasher("dhfi", n_bits=16, epochs=2, batch_size=20)
    tuned = h.finetune([effnet, resnet], [eff_pixels, rn_pixels], labels, [tmp_path / "a.pt", tmp_path / "b.pt"])
    assert [t.weights for t in tuned] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert tuned[1].weights_sha256 != resnet.weights_sha256
    assert h.feature_dims == [1280, 256] and len(h.loss_history_) == 4
    feats = np.concatenate(
        [
            tuned[0].forward(tuned[0].preprocess.normalize(eff_pixels)),
            tuned[1].forward(tuned[1].preprocess.normalize(rn_pixels)),
        ],
        axis=1,
    )
    codes = h.encode(feats)
    assert codes.n_bits == 16
    np.testing.assert_array_equal(type(h).load(_saved(h, tmp_path)).encode(feats).data, codes.data)
    alone = create_hasher("dhfi", n_bits=16, epochs=2, batch_size=20, use="a")
    kept = alone.finetune([effnet, resnet], [eff_pixels, rn_pixels], labels, [tmp_path / "a1.pt", tmp_path / "b1.pt"])
    assert kept[1] is resnet and not (tmp_path / "b1.pt").exists()
    assert alone.encode(feats).n_bits == 16


def test_finetune_rejects_pixels_of_the_wrong_size(small_pixels, tmp_path):
    pixels, labels = small_pixels["train"]
    with pytest.raises(ValueError, match="uint8 crops"):
        create_hasher("dpsh", n_bits=8).finetune(
            create_backbone("efficientnet-lite0", input_size=64), pixels, labels, tmp_path / "x.pt"
        )


def _saved(h, tmp_path):
    path = tmp_path / "h.npz"
    h.save(path)
    return path


def test_a_pretrained_trunk_keeps_its_batch_norm_statistics_and_gets_no_l2():
    import torch
    from torch import nn

    from hashsearch.hashing.deep.endtoend import ImageModel

    backbone = create_backbone("cifar-resnet32")
    model = ImageModel(backbone.init_module(), nn.Linear(256, 4), backbone.preprocess, pretrained=True).train()
    bns = [m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training
    before = bns[0].running_mean.clone()
    model.trunk(torch.randn(8, 3, 32, 32) * 5 + 3)
    assert torch.equal(bns[0].running_mean, before)
    trunk_group, head_group = model.param_groups(1e-3)
    assert trunk_group["weight_decay"] == 0.0 and "weight_decay" not in head_group
    scratch = ImageModel(backbone.init_module(), nn.Linear(256, 4), backbone.preprocess).train()
    assert all(m.training for m in scratch.trunk.modules() if isinstance(m, nn.BatchNorm2d))
