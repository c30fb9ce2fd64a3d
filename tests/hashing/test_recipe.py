"""The fine-tuning recipe's levers (`endtoend.Recipe`): parsing, augmentations, progressive resizing,
weight averaging and label smoothing, and a killed run with all of them on resuming exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hashsearch.backbones.base import Preprocess
from hashsearch.hashing.deep.endtoend import RECIPES, ImageModel, Recipe, augment_batch
from hashsearch.hashing.deep.heads import create_head
from hashsearch.hashing.deep.losses import create_loss
from hashsearch.hashing.deep.trainer import seeded, train


def test_a_recipe_is_parsed_from_a_name_pairs_or_both():
    assert Recipe.parse("paper") == Recipe()
    assert Recipe.parse("cpu") == RECIPES["cpu"]
    r = Recipe.parse("cpu, epochs=6, augment=none, start_size=none")
    assert (r.epochs, r.augment, r.start_size, r.schedule) == (6, "none", None, RECIPES["cpu"].schedule)
    assert Recipe.parse("schedule=cosine,ema=0.99").as_dict() == {
        **Recipe().as_dict(),
        "schedule": "cosine",
        "ema": 0.99,
    }


@pytest.mark.parametrize(
    "spec, words",
    [
        ("fast", "not one of paper, cpu"),
        ("epochs=4,cpu", "comes first"),
        ("lr=0.1", "'lr' is not one of epochs"),
        ("epochs=four", "not a whole number"),
        ("schedule=step", "not one of constant, cosine"),
        ("augment=heavy", "not one of none, crop-flip, strong"),
        ("ema=1", "ema"),
        ("trunk_lr_scale=0", "trunk_lr_scale"),
        ("start_size=16", "start_size"),
        ("", "is empty"),
        (",", "is empty"),
    ],
)
def test_a_bad_recipe_says_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words) as e:
        Recipe.parse(spec)
    assert str(e.value).startswith("--recipe ") and "None" not in str(e.value)


def test_progressive_sizes_grow_from_the_start_size_to_the_input_size_in_multiples_of_8():
    r = Recipe(start_size=64)
    sizes = [r.size_at(e, 5, 128) for e in range(5)]
    assert sizes[0] == 64 and sizes[-1] == 128 and sizes == sorted(sizes)
    assert all(s % 8 == 0 for s in sizes)
    assert Recipe().size_at(0, 5, 128) == 128 and Recipe(start_size=160).size_at(0, 5, 128) == 128


@pytest.mark.parametrize("kind", ["none", "crop-flip", "strong"])
def test_augmentations_keep_shape_and_range_and_follow_the_seed(kind):
    x = torch.rand(8, 3, 32, 32)
    with seeded(1):
        a = augment_batch(x, kind)
    with seeded(1):
        b = augment_batch(x, kind)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, x) == (kind == "none")


def _model(recipe: Recipe, n_bits: int = 8):
    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with seeded(0):
        trunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head = create_head("latent-tanh", in_dim=8, n_bits=n_bits, n_classes=2, dropout=0.0)
    return ImageModel(trunk, head, pre, augment=recipe.augment, trunk_lr_scale=recipe.trunk_lr_scale, recipe=recipe)


def _data():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 16)
    pixels = rng.integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    pixels[labels == 1, :32] //= 3  # something to learn: the top half darker in class 1
    return pixels, labels


def test_progressive_resizing_trains_on_smaller_images_and_scores_at_full_size():
    model = _model(Recipe(start_size=32))
    seen = []
    model.trunk.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    pixels = torch.from_numpy(_data()[0][:4])
    model.set_epoch(0, 3)
    model.train()
    model(pixels)
    model.eval()
    model(pixels)
    assert seen == [32, 64]


def test_label_smoothing_is_for_losses_with_class_targets():
    out = create_head("latent-tanh", in_dim=8, n_bits=8, n_classes=2, dropout=0.0)(torch.randn(4, 8))
    labels = torch.tensor([0, 1, 0, 1])
    csq = create_loss("csq", n_bits=8, n_classes=2)
    with torch.no_grad():
        plain = float(csq(out, labels))
    csq.label_smoothing = 0.2
    with torch.no_grad():
        assert float(csq(out, labels)) != plain
    assert not hasattr(create_loss("hashnet", n_bits=8, n_classes=2), "label_smoothing")


def _fit(recipe: Recipe, checkpoint, interrupt_after: int | None = None):
    pixels, labels = _data()
    model = _model(recipe)
    loss = create_loss("hashnet", n_bits=8, n_classes=2)
    calls = []

    def validate(m) -> float:
        calls.append(1)
        if interrupt_after is not None and len(calls) > interrupt_after:
            raise KeyboardInterrupt  # killed in the epoch after `interrupt_after` (its checkpoint not written)
        with torch.no_grad():
            codes = m(torch.from_numpy(pixels)).codes_continuous
        return float((codes[labels == 0].mean(0) - codes[labels == 1].mean(0)).abs().mean())

    history = train(
        model,
        loss,
        pixels,
        labels,
        epochs=recipe.epochs,
        batch_size=8,
        lr=1e-2,
        weight_decay=0.0,
        seed=0,
        device="cpu",
        progress=False,
        cosine=recipe.schedule == "cosine",
        ema=recipe.ema,
        validate=validate,
        checkpoint=checkpoint,
    )
    return model, history


def test_a_killed_run_with_every_lever_on_resumes_into_the_uninterrupted_model(tmp_path):
    recipe = Recipe(epochs=4, schedule="cosine", augment="strong", ema=0.9, start_size=32)
    ref, ref_history = _fit(recipe, tmp_path / "ref.pt")
    with pytest.raises(KeyboardInterrupt):
        _fit(recipe, tmp_path / "killed.pt", interrupt_after=2)
    resumed, history = _fit(recipe, tmp_path / "killed.pt")
    assert history.resumed_at == 2 and len(history.epoch_loss) == 4
    assert history.val_score == pytest.approx(ref_history.val_score, abs=1e-6)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_the_model_ends_with_the_weight_average_when_ema_is_on(tmp_path):
    plain, _ = _fit(Recipe(epochs=2), None)
    averaged, _ = _fit(Recipe(epochs=2, ema=0.9), None)
    # Same seed and data: only the kept weights differ (the average of the steps, not the last step).
    assert not torch.allclose(plain.head.state_dict()["latent.weight"], averaged.head.state_dict()["latent.weight"])
