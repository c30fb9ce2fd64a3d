"""DLBHC and the deep infrastructure: heads, losses, the one training loop."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hashsearch.codes import hamming_distances
from hashsearch.hashing import Hasher, create_hasher
from hashsearch.hashing.deep import DLBHC, DeepHasher
from hashsearch.hashing.deep.heads import HeadOutput, LatentSigmoidHead, create_head, list_heads
from hashsearch.hashing.deep.losses import create_loss, list_losses
from hashsearch.hashing.deep.trainer import TrainHistory, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hamming_map(hasher, Xq, yq, Xd, yd) -> float:
    D = hamming_distances(hasher.encode(Xq), hasher.encode(Xd))
    aps = []
    for i in range(len(D)):
        ranks = np.flatnonzero(yd[np.argsort(D[i], kind="stable")] == yq[i]) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def test_loss_decreases_over_epochs(clustered):
    X, y = clustered
    h = DLBHC(n_bits=32, epochs=10).fit(X, y)
    assert h.loss_history_.shape == (10,)
    assert h.loss_history_[0] > h.loss_history_[-1]
    assert h.train_seconds_ > 0


def test_dlbhc_retrieves_better_than_lsh(clustered):
    X, y = clustered
    # blur the clusters so that random hyperplanes no longer separate them well
    X = X + np.random.default_rng(1).normal(0, 4, X.shape).astype(np.float32)
    Xq, yq, Xd, yd = X[:100], y[:100], X[100:], y[100:]
    dlbhc = DLBHC(n_bits=32, epochs=30).fit(Xd, yd)
    lsh = create_hasher("lsh", n_bits=32).fit(Xd)
    m_dlbhc, m_lsh = hamming_map(dlbhc, Xq, yq, Xd, yd), hamming_map(lsh, Xq, yq, Xd, yd)
    assert m_dlbhc > m_lsh + 0.1, (m_dlbhc, m_lsh)


def test_bits_equal_the_torch_models_sigmoid(clustered):
    X, y = clustered
    h = DLBHC(n_bits=24, epochs=30).fit(X, y)
    model = h.to_torch()
    assert isinstance(model, LatentSigmoidHead) and not model.training
    with torch.no_grad():
        out = model(torch.from_numpy(h.standardize(X)))
    assert isinstance(out, HeadOutput)
    assert out.codes_continuous.min() > 0 and out.codes_continuous.max() < 1
    np.testing.assert_array_equal(h.encode(X).to_bits(), (out.codes_continuous >= 0.5).numpy())
    # the classifier is kept too: NumPy predict agrees with the torch logits
    np.testing.assert_array_equal(h.predict(X), h.classes_[out.logits.argmax(1).numpy()])
    np.testing.assert_allclose(h.predict_proba(X), torch.softmax(out.logits, 1).numpy(), atol=1e-5)
    assert (h.predict(X) == y).mean() > 0.9


def test_determinism_with_seed(clustered):
    X, y = clustered
    rng_before = torch.get_rng_state()
    a = DLBHC(n_bits=16, epochs=3, seed=4).fit(X, y)
    b = DLBHC(n_bits=16, epochs=3, seed=4).fit(X, y)
    c = DLBHC(n_bits=16, epochs=3, seed=5).fit(X, y)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    state_a, state_b = a._get_state(), b._get_state()
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        np.testing.assert_array_equal(state_a[k], state_b[k])
    np.testing.assert_array_equal(a.encode(X).data, b.encode(X).data)
    assert not np.array_equal(a.head_state_["latent.weight"], c.head_state_["latent.weight"])


def test_learned_state_and_loss_history_are_saved(clustered, tmp_path):
    X, y = clustered
    h = DLBHC(n_bits=16, epochs=4, dropout=0.1, lr=2e-3).fit(X, y)
    assert {
        "head.latent.weight",
        "head.latent.bias",
        "head.classifier.weight",
        "head.classifier.bias",
        "feature_mean_",
        "feature_std_",
        "classes_",
        "loss_history_",
    } <= set(h._get_state())
    assert h.head_state_["latent.weight"].shape == (16, 32) and h.head_state_["classifier.weight"].shape == (6, 16)
    h.save(tmp_path / "d.npz")
    loaded = Hasher.load(tmp_path / "d.npz")
    assert loaded.name == "dlbhc" and loaded.get_params() == h.get_params()
    np.testing.assert_array_equal(loaded.loss_history_, h.loss_history_)
    assert loaded.get_params()["dropout"] == 0.1 and loaded.get_params()["lr"] == 2e-3
    np.testing.assert_array_equal(loaded.predict(X), h.predict(X))


def test_arbitrary_label_values_are_mapped_to_classes(clustered, tmp_path):
    X, y = clustered
    names = np.array(["airplane", "bird", "cat", "deer", "dog", "frog"])
    by_id = DLBHC(n_bits=16, epochs=3).fit(X, y)
    by_name = DLBHC(n_bits=16, epochs=3).fit(X, names[y])
    by_value = DLBHC(n_bits=16, epochs=3).fit(X, y * 10 + 7)
    np.testing.assert_array_equal(by_name.classes_, names)
    np.testing.assert_array_equal(by_value.classes_, np.arange(6) * 10 + 7)
    np.testing.assert_array_equal(by_id.encode(X).data, by_name.encode(X).data)
    np.testing.assert_array_equal(by_id.encode(X).data, by_value.encode(X).data)
    # string classes survive save/load without pickle; object arrays are accepted too
    by_name.save(tmp_path / "n.npz")
    loaded = Hasher.load(tmp_path / "n.npz")
    assert loaded.classes_.dtype.kind == "U"
    np.testing.assert_array_equal(loaded.predict(X), by_name.predict(X))
    assert set(loaded.predict(X)) <= set(names)
    DLBHC(n_bits=8, epochs=1).fit(X, names[y].astype(object)).save(tmp_path / "o.npz")


@pytest.mark.parametrize(
    "labels, match",
    [
        (lambda y: np.eye(6)[y], "1-d"),
        (lambda y: np.zeros_like(y), "at least 2 classes"),
        (lambda y: y + 0.5, "non-integer"),
    ],
)
def test_bad_labels(clustered, labels, match):
    X, y = clustered
    with pytest.raises(ValueError, match=match):
        DLBHC(n_bits=8, epochs=1).fit(X, labels(y))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"dropout": 1.0}, "dropout"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"device": "no-such-device"}, "device"),
    ],
)
def test_bad_params(clustered, params, match):
    X, y = clustered
    h = DLBHC(n_bits=8, **params)
    with pytest.raises(ValueError, match=match):
        h.fit(X, y)
    assert not hasattr(h, "n_features_in_")


def test_a_preset_is_the_composed_hasher(clustered):
    """ "dpsh" is DeepHasher with the latent-tanh head and the dpsh loss: the same training, the same codes."""
    X, y = clustered
    preset = create_hasher("dpsh", n_bits=16, epochs=3, eta=0.2)
    composed = DeepHasher(n_bits=16, head="latent-tanh", loss="dpsh", loss_params={"eta": 0.2}, epochs=3)
    np.testing.assert_array_equal(preset.fit(X, y).encode(X).data, composed.fit(X, y).encode(X).data)
    assert preset.get_params() == {
        "n_bits": 16,
        "seed": 0,
        "epochs": 3,
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 5e-4,
        "dropout": 0.2,
        "device": "cpu",
        "eta": 0.2,
    }
    assert repr(preset).startswith("dpsh(n_bits=16") and composed.name == "deep"


def test_any_head_with_any_loss_trains_saves_and_loads(clustered, tmp_path):
    """A pairing no paper made (DFEH's head with DSH's loss) is one DeepHasher, not a new class."""
    X, y = clustered
    h = DeepHasher(
        n_bits=12, head="feature-enhance", loss="dsh", head_params={"hidden": 24}, loss_params={"alpha": 0.05}, epochs=3
    ).fit(X, y)
    h.save(tmp_path / "h.npz")
    back = Hasher.load(tmp_path / "h.npz")
    assert back.name == "deep" and back.get_params() == h.get_params()
    np.testing.assert_array_equal(back.encode(X).data, h.encode(X).data)
    assert [str(x) for x in back.code_layers_] == ["enhance", "latent"]
    with torch.no_grad():  # the NumPy encoder is the torch head's sign
        z = back.to_torch()(torch.from_numpy(back.standardize(X))).pre_activation.numpy()
    np.testing.assert_array_equal(back.encode(X).to_bits(), (z >= 0).astype(np.uint8))
    with pytest.raises(TypeError, match="no classifier"):
        back.predict(X)


def test_composition_errors_name_the_choices(clustered):
    X, y = clustered
    with pytest.raises(ValueError, match="unknown head 'nope'.*latent-sigmoid"):
        DeepHasher(n_bits=8, head="nope", epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="unknown loss 'nope'.*cross-entropy"):
        DeepHasher(n_bits=8, loss="nope", epochs=1).fit(X, y)
    with pytest.raises(TypeError, match=r"dpsh\(\) got unexpected parameters \['margin'\].*eta"):
        create_hasher("dpsh", margin=3)


def test_registries_of_heads_and_losses():
    assert "latent-sigmoid" in list_heads()
    assert "cross-entropy" in list_losses()
    head = create_head("latent-sigmoid", in_dim=5, n_bits=4, n_classes=3, dropout=0.0)
    loss = create_loss("cross-entropy", n_bits=4, n_classes=3)
    out = head(torch.zeros(2, 5))
    assert out.codes_continuous.shape == (2, 4) and out.logits.shape == (2, 3)
    assert loss(out, torch.tensor([0, 2])).ndim == 0
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("nope", n_bits=4)


def test_trainer_on_its_own(clustered):
    X, y = clustered
    X = (X - X.mean(0)) / X.std(0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        head = LatentSigmoidHead(32, 8, 6, dropout=0.2)
        loss = create_loss("cross-entropy", n_bits=8, n_classes=6)
        hist = train(
            head,
            loss,
            X,
            y,
            epochs=3,
            batch_size=64,
            lr=1e-2,
            weight_decay=0.0,
            seed=1,
            device="cpu",
            log_every=1,
            progress=False,
        )
        runs.append((hist, head))
    hist = runs[0][0]
    assert isinstance(hist, TrainHistory) and len(hist.epoch_loss) == 3 and hist.seconds > 0
    assert hist.epoch_loss[-1] < hist.epoch_loss[0]
    assert hist.epoch_loss == runs[1][0].epoch_loss
    assert not runs[0][1].training  # left in eval mode
    with pytest.raises(FloatingPointError, match="lr"):
        train(
            LatentSigmoidHead(32, 8, 6),
            loss,
            X * np.nan,
            y,
            epochs=1,
            batch_size=64,
            lr=1e-3,
            weight_decay=0.0,
            seed=0,
            device="cpu",
            progress=False,
        )


def test_importing_hashers_does_not_import_torch():
    code = "import sys, hashsearch.hashing as h; h.list_hashers(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _head_run(X, y, checkpoint, epochs=12, stop_in=None, nap=0.0, **loop):
    """A small head trained by the loop; validate naps `nap` seconds (so that time passes by epochs)
    and raises KeyboardInterrupt in epoch `stop_in` (its checkpoint not written)."""
    torch.manual_seed(0)
    head = LatentSigmoidHead(32, 8, 6, dropout=0.2)
    calls = []

    def validate(model) -> float:
        calls.append(1)
        if len(calls) == stop_in:
            raise KeyboardInterrupt
        time.sleep(nap)
        return -float(len(calls))  # never better: no epoch's weights are kept but the first's

    hist = train(
        head,
        create_loss("cross-entropy", n_bits=8, n_classes=6),
        X,
        y,
        epochs=epochs,
        batch_size=64,
        lr=1e-2,
        weight_decay=0.0,
        seed=1,
        device="cpu",
        progress=False,
        validate=validate,
        checkpoint=checkpoint,
        **loop,
    )
    return head, hist


def _epochs_in(checkpoint) -> int:
    return len(torch.load(checkpoint, weights_only=True)["history"]["epoch_loss"])


def test_a_checkpoint_written_every_few_seconds_resumes_into_the_uninterrupted_model(clustered, tmp_path):
    """checkpoint_seconds: the checkpoint is written only when that long has passed since the last
    one, and after the last epoch; a run killed between two resumes from the earlier one and ends
    as the uninterrupted run. 0 (the default) writes it after every epoch."""
    X, y = clustered
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    ref, ref_hist = _head_run(X, y, tmp_path / "ref.pt", nap=0.02)
    assert _epochs_in(tmp_path / "ref.pt") == 12  # the last epoch is always written
    # Killed in epoch 8 (7 done): every epoch written, the checkpoint holds 7.
    with pytest.raises(KeyboardInterrupt):
        _head_run(X, y, tmp_path / "every.pt", stop_in=8, nap=0.02)
    assert _epochs_in(tmp_path / "every.pt") == 7
    # At most every 0.1 s with epochs of >= 0.02 s: at least 2 epochs apart, so not the 7th.
    with pytest.raises(KeyboardInterrupt):
        _head_run(X, y, tmp_path / "few.pt", stop_in=8, nap=0.02, checkpoint_seconds=0.1)
    done = _epochs_in(tmp_path / "few.pt")
    assert 1 <= done <= 6, done
    resumed, hist = _head_run(X, y, tmp_path / "few.pt", nap=0.02, checkpoint_seconds=0.1)
    assert hist.resumed_at == done and len(hist.epoch_loss) == 12
    assert hist.epoch_loss == pytest.approx(ref_hist.epoch_loss, abs=1e-6)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    # Never due by time: nothing before the end, and an early stop is written as the last epoch.
    with pytest.raises(KeyboardInterrupt):
        _head_run(X, y, tmp_path / "none.pt", stop_in=8, checkpoint_seconds=3600)
    assert not (tmp_path / "none.pt").exists()
    _, hist = _head_run(X, y, tmp_path / "early.pt", patience=2, checkpoint_seconds=3600)
    assert hist.stopped_early and len(hist.epoch_loss) == 3 and _epochs_in(tmp_path / "early.pt") == 3
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        _head_run(X, y, None, checkpoint_seconds=-1)


def test_progress_is_logged_every_few_seconds_where_the_bar_is_hidden(clustered, caplog):
    """Off a terminal (or progress=False) the bar is hidden: with `log`, a line at most every
    log_seconds says the epoch, loss, validation score and time; none for the last epoch (the
    caller's closing line says that)."""
    import logging

    X, y = clustered
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    log = logging.getLogger("tests.progress")
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        _head_run(X, y, None, epochs=4, desc="training dlbhc", log=log, log_seconds=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.progress"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("training dlbhc: epoch 1/4, loss ") and ", validation -1.0000; " in lines[0]
    assert lines[0].endswith("s left") and "s so far, about " in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        _head_run(X, y, None, epochs=4, log=log)  # every 10 s by default: none in a run of milliseconds
    assert not [r for r in caplog.records if r.name == "tests.progress"]


def test_head_mode_logs_as_training_starts_and_ends_and_records_the_epochs_run(clustered, caplog, tmp_path):
    import logging

    X, y = clustered
    with caplog.at_level(logging.INFO, logger="hashsearch.hashing.deep.base"):
        h = create_hasher("dpsh", n_bits=16, epochs=3, batch_size=64).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "hashsearch.hashing.deep.base"]
    steps = 3 * -(-len(X) // 64)
    assert lines[0] == f"dpsh: training the hash layer, 3 epochs ({steps} optimiser steps)...", lines
    assert lines[-1].startswith("dpsh: trained the hash layer in ") and lines[-1].endswith("s (3 epochs)"), lines
    assert h.epochs_run_ == 3
    h.save(tmp_path / "h.npz")
    assert Hasher.load(tmp_path / "h.npz").epochs_run_ == 3
