"""DPSH, DSH, DFEH, HashNet, CSQ: their losses on hand-made cases, loss decrease and retrieval vs LSH on real features."""

from __future__ import annotations

import numpy as np
import pytest

from hashsearch.hashing import create_hasher

DEEP = ["dpsh", "dsh", "dfeh", "hashnet", "csq"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", DEEP)
def test_loss_decreases_and_beats_lsh_on_real_features(name, cifar_features, real_map):
    X, y, Xq, yq = cifar_features
    h = create_hasher(name, n_bits=32, epochs=15, batch_size=40).fit(X, y)
    loss = h.loss_history_
    assert loss[-1] < loss[0], loss
    lsh = np.mean([real_map(create_hasher("lsh", n_bits=32, seed=s).fit(X), Xq, yq, X, y) for s in range(5)])
    ours = real_map(h, Xq, yq, X, y)
    assert ours > lsh + 0.1, f"{name}: {ours:.3f} vs LSH {lsh:.3f}"


def _out(u):
    import torch

    from hashsearch.hashing.deep.heads import HeadOutput

    u = torch.as_tensor(u, dtype=torch.float32)
    return HeadOutput(codes_continuous=u, logits=None, pre_activation=torch.atanh(u.clamp(-0.999, 0.999)))


def test_pairwise_losses_prefer_codes_that_agree_with_labels():
    import torch

    from hashsearch.hashing.deep.losses import create_loss

    labels = torch.tensor([0, 0, 1, 1])
    good = _out([[0.9, 0.9], [0.9, 0.9], [-0.9, -0.9], [-0.9, -0.9]])
    bad = _out([[0.9, 0.9], [-0.9, -0.9], [0.9, 0.9], [-0.9, -0.9]])
    for name in ("dpsh", "dsh", "dfeh", "hashnet", "csq"):
        loss = create_loss(name, n_bits=2, n_classes=2)
        assert loss(good, labels) < loss(bad, labels), name


def test_dfeh_terms_and_ablation_switches():
    import torch

    from hashsearch.hashing.deep.losses import create_loss

    labels = torch.tensor([0, 1])
    u = _out([[0.5, 0.5], [0.5, 0.5]])  # unbalanced bits, not at +-1, dissimilar pair at distance 0
    full = create_loss("dfeh", n_bits=2, lambda_q=1.0, lambda_b=1.0)(u, labels)
    no_q = create_loss("dfeh", n_bits=2, lambda_q=0.0, lambda_b=1.0)(u, labels)
    no_b = create_loss("dfeh", n_bits=2, lambda_q=1.0, lambda_b=0.0)(u, labels)
    only_reg = create_loss("dfeh", n_bits=2, lambda_q=1.0, lambda_b=1.0, use_contrastive=False)(u, labels)
    # contrastive: 0.5 * relu(4 - 0) averaged over the 2 x 2 pair matrix (2 dissimilar entries) = 1.0
    assert float(full - only_reg) == pytest.approx(1.0)
    assert float(full - no_q) == pytest.approx(2 * 0.25)  # sum over bits of (|u| - 1)^2
    assert float(full - no_b) == pytest.approx(2 * 0.25)  # sum over bits of batch-mean^2


def test_csq_centres_are_far_apart():
    from hashsearch.hashing.deep.losses import hash_centres

    for n_classes, bits in ((10, 16), (10, 12), (10, 48)):
        C = hash_centres(n_classes, bits).numpy()
        assert set(np.unique(C)) <= {-1.0, 1.0}
        D = (C[:, None] != C[None]).sum(-1) + np.eye(n_classes) * bits
        assert D.min() >= bits / 4


def test_dfeh_numpy_encoder_matches_torch(clustered):
    import torch

    X, y = clustered
    h = create_hasher("dfeh", n_bits=16, epochs=2, hidden=32).fit(X, y)
    with torch.no_grad():
        z = h.to_torch()(torch.from_numpy(h.standardize(X))).pre_activation.numpy()
    np.testing.assert_array_equal(h.encode(X).to_bits().astype(bool), z >= 0)
