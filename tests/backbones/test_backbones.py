"""Backbones: preprocessing, offline weights, real features that separate CIFAR-10 classes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashsearch.backbones import create_backbone, list_backbones
from hashsearch.data.sources import open_source
from hashsearch.pipeline.local import extract_features


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet-lite0", input_size=64)


def test_registry_lists_the_efficientnet_lite_family():
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(list_backbones())


def test_preprocess_shape_and_normalisation(lite0):
    img = Image.new("RGB", (50, 30), (255, 127, 0))
    x = lite0.preprocess(img)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    # (v/255 - 127/255) / (128/255) = (v - 127) / 128
    np.testing.assert_allclose(x[:, 10, 10], [(255 - 127) / 128, 0, -127 / 128], atol=1e-6)


def test_normalize_gives_the_same_bits_as_the_float_arithmetic():
    """The table lookup equals (v * float32(1/255) - mean) / std in float32, exactly, for any batch shape."""
    from hashsearch.backbones.base import Preprocess

    pre = Preprocess(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    x = (pixels.astype(np.float32) * np.float32(1 / 255) - np.float32(pre.mean)) / np.float32(pre.std)
    out = pre.normalize(pixels)
    assert out.shape == (2, 3, 3, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.moveaxis(x, -1, -3))
    with pytest.raises(ValueError, match="uint8"):
        pre.normalize(pixels.astype(np.float32))


def test_crop_resizes_only_the_kept_box_like_resize_then_crop(cifar_small):
    """`crop` resizes the centre box alone (Pillow's box): the same pixels as resizing the whole
    image and cropping, up to rounding (+-2 levels on a few values), on a real photo-sized image."""
    from hashsearch.backbones.base import Preprocess
    from hashsearch.data.decode import decode_image

    path = sorted((cifar_small / "test").rglob("*.jpg"))[0]
    small = decode_image(path.read_bytes(), str(path))
    for size in ((1152, 864), (640, 1000), (300, 301)):
        image = small.resize(size, Image.BICUBIC)
        pre = Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        got = pre.crop(image).astype(int)
        scale = 224 / min(size)
        nw, nh = max(224, round(size[0] * scale)), max(224, round(size[1] * scale))
        left, top = (nw - 224) // 2, (nh - 224) // 2
        whole = image.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0).crop((left, top, left + 224, top + 224))
        want = np.asarray(whole).astype(int)
        assert got.shape == want.shape == (224, 224, 3)
        assert np.abs(got - want).max() <= 2 and (got != want).mean() < 0.005, size


def test_missing_weights_file_is_named(tmp_path):
    bb = create_backbone("efficientnet-lite0", weights=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        bb.torch_module()


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        create_backbone("efficientnet-lite0", input_size=100)


def test_user_weights_file_is_used(tmp_path, lite0):
    import shutil

    copy = tmp_path / "my.pth"
    shutil.copy(lite0.weights_path, copy)
    mine = create_backbone("efficientnet-lite0", input_size=64, weights=copy)
    assert mine.weights_path == copy and mine.cache_key == lite0.cache_key
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(mine.forward(x), lite0.forward(x), atol=1e-5)


def test_pretrained_features_separate_classes(cifar_small, tmp_path):
    """Nearest-centroid accuracy on real CIFAR-10 images is far above chance (10%).

    Measured at 128 px: 0.55 with the ImageNet weights, 0.05 with a randomly initialised network.
    """
    src = open_source(cifar_small)
    ex = extract_features(
        src, create_backbone("efficientnet-lite0", input_size=128), cache_dir=tmp_path, progress=False
    )
    assert ex.features.shape == (120, 1280) and ex.n_computed == 120
    split = np.array([Path(r.key).parts[-3] for r in ex.records])
    labels = np.array([r.label for r in ex.records])
    X = ex.features / np.linalg.norm(ex.features, axis=1, keepdims=True)
    classes = sorted(set(labels))
    centres = np.stack([X[(split == "train") & (labels == c)].mean(0) for c in classes])
    pred = np.array(classes)[np.argmax(X[split == "test"] @ centres.T, axis=1)]
    assert (pred == labels[split == "test"]).mean() >= 0.45


def test_second_run_reads_the_cache(cifar_small, tmp_path, lite0):
    src = open_source(cifar_small / "test")
    first = extract_features(src, lite0, cache_dir=tmp_path, progress=False)
    again = extract_features(src, lite0, cache_dir=tmp_path, progress=False)
    assert first.n_computed == 40 and again.n_computed == 0 and again.n_cached == 40
    np.testing.assert_array_equal(first.features, again.features)
    # Another resolution is another cache key: nothing is shared by mistake.
    other = extract_features(
        src, create_backbone("efficientnet-lite0", input_size=32), cache_dir=tmp_path, progress=False
    )
    assert other.n_computed == 40


def test_bad_files_are_skipped_named_and_counted(cifar_small, tmp_path, lite0):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(cifar_small / "test" / "cat", folder / "cat")
    (folder / "cat" / "empty.jpg").write_bytes(b"")
    (folder / "cat" / "notes.png").write_text("not an image")
    good = next((cifar_small / "test" / "dog").glob("*.jpg")).read_bytes()
    (folder / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning) as caught:
        ex = extract_features(open_source(folder), lite0, cache_dir=tmp_path, progress=False)
    assert len(ex.records) == 4
    skipped = {Path(k).name for k, _ in ex.report.skipped}
    assert skipped == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert sum("skipping" in str(w.message) for w in caught) == 3


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_keeps_the_backbone_contract(name, tmp_path):
    """Over the registry: a backbone carries its preprocessing, names its features by a cache key
    that changes with its weights, and maps an (n, 3, s, s) batch to (n, feature_dim) float32;
    saved weights load back as the same features (a trained backbone is one like any other)."""
    import torch

    bb = create_backbone(name)
    try:
        _ = bb.weights_path
    except FileNotFoundError as e:  # trained from scratch: no packaged weights; it says how to make them
        assert "train_backbone" in str(e)
        torch.manual_seed(0)
        bb = create_backbone(name, weights=str(bb.save_weights(bb.init_module(), tmp_path / "init.pt")))
    s = bb.preprocess.input_size
    assert bb.config()["name"] == name and bb.cache_key.startswith(f"{name}-{s}px-")
    crop = np.random.default_rng(0).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    batch = bb.preprocess.normalize(crop)
    assert batch.shape == (2, 3, s, s) and batch.dtype == np.float32
    feats = bb.forward(batch)
    assert feats.shape == (2, bb.feature_dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
    saved = bb.save_weights(bb.torch_module(), tmp_path / "w.pt")
    again = create_backbone(name, weights=str(saved), input_size=s)
    assert again.cache_key != bb.cache_key or again.weights_sha256 == bb.weights_sha256
    np.testing.assert_allclose(again.forward(batch), feats, rtol=1e-4, atol=1e-4)
