"""The `unseen-classes` protocol: hashers learn from 7 classes and retrieve among the other 3 only.

A code that merely encodes the classifier's output scores well on the standard protocols without
retrieving anything it was not taught; here every query and database image belongs to a class
absent from training, so only codes that keep general visual similarity score above chance.
"""

from __future__ import annotations

import numpy as np

from hashsearch.data.protocols import Split, load_protocol, protocols
from hashsearch.data.sources import plural
from hashsearch.validation import check_int


def unseen_classes(split: Split, n_unseen: int = 3, seed: int = 0, name: str | None = None) -> Split:
    """Restrict `split` to seen classes for training and to `n_unseen` held-out classes for queries and database.

    The held-out classes are drawn with `seed` from the sorted class labels of `split.train`.
    """
    classes = sorted({r.label for r in split.train})
    check_int(
        "n_unseen",
        n_unseen,
        low=1,
        high=len(classes) - 2,
        note=f"the split has {plural(len(classes), 'class', 'classes')} and training needs 2",
    )
    rng = np.random.default_rng(seed)
    unseen = sorted(classes[i] for i in rng.choice(len(classes), n_unseen, replace=False))
    held = set(unseen)
    train = [r for r in split.train if r.label not in held]
    trained = {r.key for r in train}
    query = [r for r in split.query if r.label in held]
    database = [r for r in split.database if r.label in held and r.key not in trained]
    return Split(
        name or f"{split.name}-unseen",
        train,
        query,
        database,
        split.seed,
        f"{split.description} Unseen-classes variant: training on the {len(classes) - n_unseen} classes "
        f"other than {', '.join(map(str, unseen))}; queries and database restricted to those {n_unseen} classes.",
    )


@protocols.register("unseen-classes")
def cifar10_unseen(seed: int = 0) -> Split:
    """cifar10-1k with 3 classes held out: 3,500 train (7 classes), 300 queries and 17,700 database images of the other 3."""
    return unseen_classes(load_protocol("cifar10-1k", seed=seed), n_unseen=3, seed=seed, name="unseen-classes")
