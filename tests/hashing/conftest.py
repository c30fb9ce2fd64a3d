"""Real features for the method tests: EfficientNet-Lite0 (128 px) features of the `cifar_small` images."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def cifar_features(cifar_small):
    """(X_train, y_train, X_test, y_test): 80 train and 40 test real CIFAR-10 images, 10 classes, 1280-d features."""
    import torch
    from PIL import Image

    from hashsearch.backbones import create_backbone

    backbone = create_backbone("efficientnet-lite0", input_size=128)
    out = {}
    for split in ("train", "test"):
        paths = sorted(cifar_small.glob(f"{split}/*/*.jpg"))
        labels = np.array([p.parent.name for p in paths])
        batch = np.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            out[split] = (np.asarray(backbone.forward(batch), np.float32), labels)
    return out["train"][0], out["train"][1], out["test"][0], out["test"][1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for the module (small models train faster without thread overhead)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_map():
    """The function (hasher, Xq, yq, Xd, yd) -> mAP@ALL used by the method tests."""
    return _hamming_map


def _hamming_map(hasher, Xq, yq, Xd, yd) -> float:
    """mAP@ALL of Hamming ranking (ties by database index) of the hasher's codes."""
    from hashsearch.codes import hamming_distances

    D = hamming_distances(hasher.encode(Xq), hasher.encode(Xd))
    aps = []
    for i in range(len(D)):
        rel = yd[np.argsort(D[i], kind="stable")] == yq[i]
        ranks = np.flatnonzero(rel) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))
