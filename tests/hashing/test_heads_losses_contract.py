"""Contract tests over every registered head and loss (as over every hasher and index back end):
a head builds from (in_dim, n_bits, n_classes, dropout), returns a HeadOutput of the right shapes,
declares the layers that make its code so that NumPy reproduces its bits, and every loss paired
with every head either trains it (a finite scalar whose gradient reaches the head) or refuses
with a message that names the head it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashsearch.hashing.deep import DeepHasher
from hashsearch.hashing.deep.heads import HeadOutput, create_head, list_heads
from hashsearch.hashing.deep.losses import create_loss, list_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN, BITS, CLASSES, N = 12, 8, 3, 24


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, IN, generator=g), torch.arange(N) % CLASSES


@pytest.mark.parametrize("name", list_heads())
def test_a_head_builds_and_its_code_layers_give_its_bits(name):
    torch.manual_seed(0)
    head = create_head(name, in_dim=IN, n_bits=BITS, n_classes=CLASSES, dropout=0.1).eval()
    x, _ = batch()
    with torch.no_grad():
        out = head(x)
    assert isinstance(out, HeadOutput) and head.name == name
    assert out.pre_activation.shape == out.codes_continuous.shape == (N, BITS)
    assert out.logits is None or out.logits.shape == (N, CLASSES)
    low, high = head.code_range
    assert out.codes_continuous.min() >= low and out.codes_continuous.max() <= high
    assert head.activation in ("sigmoid", "tanh") and head.code_layers[-1] == "latent"
    # What DeepHasher computes in NumPy from the declared layers (ReLU between them).
    state = {k: v.numpy() for k, v in head.state_dict().items()}
    h = x.numpy()
    for i, layer in enumerate(head.code_layers):
        h = h @ state[f"{layer}.weight"].T + state[f"{layer}.bias"]
        h = np.maximum(h, 0) if i < len(head.code_layers) - 1 else h
    np.testing.assert_allclose(h, out.pre_activation.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_name", list_losses())
@pytest.mark.parametrize("head_name", list_heads())
def test_every_loss_trains_every_head_or_names_what_it_needs(head_name, loss_name):
    torch.manual_seed(0)
    head = create_head(head_name, in_dim=IN, n_bits=BITS, n_classes=CLASSES).train()
    loss_fn = create_loss(loss_name, n_bits=BITS, n_classes=CLASSES)
    x, y = batch()
    out = head(x)
    try:
        loss = loss_fn(out, y)
    except ValueError as e:
        assert "head" in str(e), e  # the message says which head the loss needs
        return
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert head.latent.weight.grad is not None and torch.isfinite(head.latent.weight.grad).all()


@pytest.mark.parametrize("loss_name", list_losses())
def test_every_loss_is_a_deep_hasher_with_a_head_it_fits(loss_name, clustered):
    """Composition end to end: each loss trains through DeepHasher with the first head it accepts."""
    X, y = clustered
    for head_name in list_heads():
        try:
            h = DeepHasher(n_bits=BITS, head=head_name, loss=loss_name, epochs=1).fit(X, y)
        except ValueError as e:
            assert "head" in str(e)
            continue
        assert h.encode(X).n_bits == BITS and np.isfinite(h.loss_history_).all()
        return
    pytest.fail(f"no registered head fits loss {loss_name!r}")
