"""The runner's method specs and the features it hands to methods defined on several backbones."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.evaluation.runner import Part, ProtocolFeatures, concat_features, parse_method, run_methods


def _feats(dim: int, digests: list[str], seed: int) -> ProtocolFeatures:
    g = np.random.default_rng(seed)

    def part(ds):
        return Part(g.normal(size=(len(ds), dim)).astype(np.float32), np.arange(len(ds)) % 2, list(ds), list(ds))

    return ProtocolFeatures(part(digests), part(digests[:4]), part(digests), ["a", "b"])


def test_parse_method_reads_bracketed_parameters():
    assert parse_method("itq") == ("itq", {})
    assert parse_method("dfeh[lambda_q=0,lambda_b=0.1,use_contrastive=false]") == (
        "dfeh", {"lambda_q": 0, "lambda_b": 0.1, "use_contrastive": False})
    assert parse_method("dhfi[use=b]") == ("dhfi", {"use": "b"})
    with pytest.raises(ValueError, match="nope"):
        parse_method("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("itq[7]")


def test_concat_features_keeps_the_images_every_backbone_read_in_order():
    a = _feats(3, list("abcdef"), 0)
    b = _feats(2, list("abcdef"), 1)
    b.train = Part(b.train.features[1:], b.train.labels[1:], b.train.records[1:], b.train.digests[1:])  # 'a' failed here
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
