"""The one shared fixture set: a few real CIFAR-10 (JPEG) images per class, and synthetic data."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_archive() -> Path:
    """The CIFAR-10 (JPEG) archive beside the checkout (../shared/datasets)."""
    env = os.environ.get("HASHSEARCH_CIFAR10")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpg.tar.gz"
    if not path.exists():
        pytest.fail(f"CIFAR-10 archive not found at {path}; set HASHSEARCH_CIFAR10 to its path")
    return path


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """A folder `<root>/{train,test}/<class>/*.jpg` with 8 train and 4 test images per class.

    The first images of each class in archive order, so the set is the same on every machine.
    """
    root = tmp_path_factory.mktemp("cifar_small")
    want = {"train": 8, "test": 4}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(cifar_archive(), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if split not in want or taken.get((split, cls), 0) >= want[split]:
                continue
            dest = root / split / cls / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            if len(taken) == 20 and all(taken[k] >= want[k[0]] for k in taken):
                break
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def clustered_features(n: int = 600, d: int = 32, n_classes: int = 6, seed: int = 0):
    """Synthetic labelled features: Gaussian clusters, one per class, well separated."""
    g = np.random.default_rng(seed)
    centres = g.normal(0, 4, (n_classes, d))
    y = g.integers(0, n_classes, n)
    X = centres[y] + g.normal(0, 1, (n, d))
    return X.astype(np.float32), y


@pytest.fixture
def clustered():
    """(features, labels) of synthetic clustered data."""
    return clustered_features()
