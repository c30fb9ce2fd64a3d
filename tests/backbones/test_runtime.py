"""ONNX Runtime extraction: agrees with PyTorch on real images; int8 has its own cache key; fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.backbones import runtime as rt
from hashsearch.data.sources import FolderSource
from hashsearch.pipeline.local import extract_features

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet-lite0", input_size=64)


@pytest.mark.parametrize("runtime", rt.RUNTIMES)
def test_every_runtime_is_a_feature_extractor(tmp_path, cifar_small, backbone, runtime):
    """The one interface: extract(uint8 crops) -> (n, feature_dim) float32, cache_key, feature_dim."""
    from hashsearch.data.decode import decode_image

    paths = sorted((cifar_small / "test").rglob("*.jpg"))[:5]
    crops = np.stack([backbone.preprocess.crop(decode_image(p.read_bytes(), str(p))) for p in paths])
    ex = rt.make_extractor(backbone, runtime, cache_dir=tmp_path)
    assert isinstance(ex, rt.FeatureExtractor) and ex.runtime == runtime
    assert ex.feature_dim == backbone.feature_dim and ex.cache_key == backbone.cache_key and not ex.int8
    feats = ex.extract(crops)
    assert feats.dtype == np.float32 and feats.shape == (5, backbone.feature_dim)
    np.testing.assert_allclose(feats, backbone.forward(backbone.preprocess.normalize(crops)), atol=rt.EXPORT_TOLERANCE)
    assert ex.ready and ex.int8_model is None
    assert (ex.worker_model() is not None) == ex.portable == (runtime == "onnx")


def test_backbones_import_nothing_from_the_pipeline():
    """backbones/ (networks, preprocessing, runtimes) sits before pipeline/ in the data flow."""
    import ast
    from pathlib import Path

    import hashsearch.backbones

    for path in Path(hashsearch.backbones.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.startswith("hashsearch.pipeline") for n in names), f"{path.name} imports {names}"


@pytest.fixture(scope="module")
def real_batch(cifar_small, backbone):
    from hashsearch.data.decode import decode_image

    paths = sorted((cifar_small / "test").rglob("*.jpg"))[:12]
    return np.stack([backbone.preprocess(decode_image(p.read_bytes(), str(p))) for p in paths])


def test_onnx_export_matches_pytorch_on_real_images(tmp_path, backbone, real_batch, capsys):
    enc = rt.make_extractor(backbone, "onnx", cache_dir=tmp_path)
    assert isinstance(enc, rt.OnnxExtractor)
    got = enc.forward(real_batch)
    assert "max abs difference from PyTorch" in capsys.readouterr().err
    assert enc.max_abs_diff is not None and enc.max_abs_diff < rt.EXPORT_TOLERANCE
    want = backbone.forward(real_batch)
    assert got.shape == want.shape == (len(real_batch), backbone.feature_dim)
    np.testing.assert_allclose(got, want, atol=rt.EXPORT_TOLERANCE, rtol=0)
    # fp32 ONNX shares the PyTorch cache key (same features within the export tolerance).
    assert enc.cache_key == backbone.cache_key
    # Cached on disk by backbone key (name, resolution, weights sha256): a second extractor reuses it.
    assert enc.fp32_path.exists() and backbone.weights_sha256[:16] in enc.fp32_path.name
    again = rt.make_extractor(backbone, "onnx", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.forward(real_batch), got)
    assert again.max_abs_diff is None  # not exported a second time


def test_int8_gets_its_own_cache_key_and_stays_close(tmp_path, backbone, real_batch):
    enc = rt.make_extractor(backbone, "onnx", cache_dir=tmp_path)
    enc.quantize(real_batch, rt.calibration_digest(["a", "b"]))
    assert enc.int8 and enc.cache_key != backbone.cache_key and "-int8-" in enc.cache_key
    q = enc.forward(real_batch)
    f = backbone.forward(real_batch)
    assert not np.allclose(q, f, atol=1e-4)  # really quantized
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = qn @ fn.T
    assert np.diag(cos).mean() > 0.93, np.diag(cos)
    # Each image's int8 feature is nearest to its own fp32 feature, not another image's.
    np.testing.assert_array_equal(cos.argmax(1), np.arange(len(q)))
    other = rt.make_extractor(backbone, "onnx", cache_dir=tmp_path)
    other.quantize(real_batch, rt.calibration_digest(["c"]))
    assert other.cache_key != enc.cache_key  # another calibration set, another key


@pytest.mark.parametrize("int8", [False, True])
def test_extract_normalises_in_the_graph_bit_for_bit(tmp_path, cifar_small, backbone, real_batch, int8):
    """`extract` takes uint8 crops and normalises inside the ONNX graph: the same features, to the
    bit, as numpy's `normalize` followed by the float model (fp32 and int8)."""
    from hashsearch.data.decode import decode_image

    paths = sorted((cifar_small / "test").rglob("*.jpg"))[:6]
    s = backbone.preprocess.input_size
    crops = np.concatenate(
        [
            np.stack([backbone.preprocess.crop(decode_image(p.read_bytes(), str(p))) for p in paths]),
            np.zeros((1, s, s, 3), np.uint8),
            np.full((1, s, s, 3), 255, np.uint8),
        ]
    )
    enc = rt.make_extractor(backbone, "onnx", cache_dir=tmp_path)
    if int8:
        enc.quantize(real_batch, rt.calibration_digest(["a"]))
    np.testing.assert_array_equal(enc.extract(crops), enc.forward(backbone.preprocess.normalize(crops)))
    torch_enc = rt.make_extractor(backbone, "torch")
    np.testing.assert_array_equal(torch_enc.extract(crops), backbone.forward(backbone.preprocess.normalize(crops)))


def test_extract_features_int8_does_not_mix_with_fp32_cache(tmp_path, cifar_small, backbone):
    src = FolderSource(cifar_small / "test")
    recs = src.records()[:16]
    fp = extract_features(src, backbone, recs, cache_dir=tmp_path, progress=False, workers=0)
    q = extract_features(
        src, backbone, recs, cache_dir=tmp_path, progress=False, workers=0, int8=True, calibration_size=8
    )
    assert q.n_computed == 16 and q.n_cached == 0 and q.cache_key != fp.cache_key
    torch_run = extract_features(src, backbone, recs, cache_dir=tmp_path, progress=False, runtime="torch")
    assert torch_run.n_cached == 16  # fp32 ONNX and PyTorch share the cache


def test_fallback_to_torch_warns_once(monkeypatch, backbone):
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: "ImportError: no onnxruntime")
    monkeypatch.setattr(rt, "_warned_fallback", False)
    with pytest.warns(rt.RuntimeFallbackWarning, match="onnxruntime cannot be loaded"):
        enc = rt.make_extractor(backbone, "onnx")
    assert isinstance(enc, rt.TorchExtractor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(rt.make_extractor(backbone, "onnx"), rt.TorchExtractor)


def test_unknown_runtime_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.make_extractor(backbone, "tensorrt")
