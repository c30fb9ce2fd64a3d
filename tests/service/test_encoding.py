"""The service encodes a query as the collection's features were: with an int8 collection's own model."""

from __future__ import annotations

import warnings

import numpy as np

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import FolderSource
from hashsearch.hashing import create_hasher
from hashsearch.pipeline.build import build_collection
from hashsearch.service.state import ServiceState


def test_an_int8_collection_is_served_with_its_own_int8_model(cifar_small, tmp_path):
    bb = create_backbone("efficientnet-lite0", input_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            FolderSource(cifar_small / "test"),
            bb,
            create_hasher("itq", n_bits=16, seed=0),
            cache_dir=tmp_path / "cache",
            progress=False,
            int8=True,
            calibration_size=16,
        )
    assert coll.int8_model is not None
    coll.save(tmp_path / "c.hsx")
    state = ServiceState(tmp_path / "c.hsx", cache_dir=tmp_path / "svc")
    queries = sorted((cifar_small / "test" / "dog").glob("*.jpg"))[:2]
    got = state.features([state.decode(q.read_bytes(), q.name) for q in queries])
    ids = np.arange(len(state.coll))
    row = {e["path"]: i for i, e in zip(ids, state.coll.entries(ids))}
    stored = state.coll.features_of(np.array([row[str(q)] for q in queries])).astype(np.float32)
    np.testing.assert_allclose(got, stored, rtol=2e-3, atol=2e-3)  # the database's int8 features, to float16
