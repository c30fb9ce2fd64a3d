"""Deep hashing without labels: the one DeepHasher and training loop, fed pseudo-targets.

`UnsupervisedDeepHasher` is `DeepHasher` (head + loss + optimiser settings, the same loop in
`deep.trainer`) for a loss that learns from pseudo-targets instead of class labels (the
unsupervised losses of `deep.losses`: "bihalf", "greedyhash-unsup", "ssdh", "spectral-bihalf").
`fit` ignores labels. The targets are the centred training features, or what the loss's
`pseudo_targets(centred features)` makes of them once before training (SSDH's distance
thresholds, spectral clusters). The registered methods are presets in `deep.presets`.

Their default `epochs=None` trains for a number of optimiser steps, not of passes: at least
`MIN_STEPS` steps and 30 epochs. On a few hundred images 30 epochs of 256-row batches are 60
steps, and the head is far from trained (flowers12: `benchmarks/unsupervised.py --validation`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar

import numpy as np

from hashsearch.hashing.deep.base import DeepHasher

#: A line per stage of a fit (pseudo-labels, then training: `DeepHasher._fit_head`'s lines, and the
#: training loop's progress when its bar is hidden), at INFO: `hashsearch index` and `train` show them.
logger = logging.getLogger(__name__)


class UnsupervisedDeepHasher(DeepHasher):
    """A deep hasher trained without labels: head + unsupervised loss + optimiser settings.

    Parameters are those of `DeepHasher`, with `loss` an unsupervised loss ("bihalf",
    "greedyhash-unsup", "ssdh", "bihalf-spectral"), and `epochs` may be None (the presets'
    default): as many epochs as make at least `MIN_STEPS` optimiser steps of `batch_size` rows,
    and at least `MIN_EPOCHS` (``max(30, ceil(2000 / ceil(n / batch_size)))``: 100 epochs on
    5,000 rows in batches of 256, 1,000 on 480, 30 on 59,000). An integer is trained as given. `fit(features)` takes no labels (labels
    passed anyway are ignored). The head's input is the standardised features, as for every deep
    hasher; the loss's targets are the features centred on the training mean (cosine
    similarities of centred features rank CIFAR-10 neighbours better than raw or standardised
    ones: `benchmarks/unsupervised.py`), or the loss's `pseudo_targets` of them.

    Attributes
    ----------
    classes_ : (0,) int64
        Empty: no classes are learned.
    n_clusters_ : int or None
        The number of clusters bihalf-spectral's pseudo-labels used (chosen from the data with
        ``n_clusters="auto"``); None for the other losses.
    Others as in `DeepHasher`.
    """

    supervised: ClassVar[bool] = False
    _logger: ClassVar[logging.Logger] = logger
    #: With ``epochs=None``: the fewest optimiser steps, and the fewest epochs, to train.
    MIN_STEPS: ClassVar[int] = 2000
    MIN_EPOCHS: ClassVar[int] = 30

    def _epochs_for(self, n_rows: int) -> int:
        if self.epochs is None:
            steps_per_epoch = math.ceil(n_rows / max(int(self.batch_size), 1))
            return max(self.MIN_EPOCHS, math.ceil(self.MIN_STEPS / max(steps_per_epoch, 1)))
        return self.epochs

    def _targets(self, y):
        # Labels are not used: no classes, and a head with a classifier gets none.
        self.classes_ = np.zeros(0, np.int64)
        return None, 0

    def _train_targets(self, X: np.ndarray, loss_fn, targets):
        # The features centred on the training mean, or what the loss makes of them.
        centred = (X - self.feature_mean_).astype(np.float32)
        n = len(X)
        targets = centred
        if hasattr(loss_fn, "pseudo_targets"):
            t = time.perf_counter()
            k = getattr(loss_fn, "n_clusters", None)
            how = "" if k is None else f" ({'a number of' if k == 'auto' else k} spectral clusters)"
            logger.info("%s: pseudo-labels of %s images%s...", self.name, f"{n:,}", how)
            targets = loss_fn.pseudo_targets(centred)
            # The cluster count bihalf-spectral used (its n_clusters="auto" chooses it from the data).
            self.n_clusters_ = getattr(loss_fn, "n_clusters_", None)
            got = "" if self.n_clusters_ is None else f" ({self.n_clusters_} clusters)"
            logger.info("%s: pseudo-labels in %.1fs%s", self.name, time.perf_counter() - t, got)
        else:
            self.n_clusters_ = None
        return targets

    def _extra_meta(self) -> dict:
        return {**super()._extra_meta(), "n_clusters": getattr(self, "n_clusters_", None)}

    def _load_extra_meta(self, extra: dict) -> None:
        super()._load_extra_meta(extra)
        self.n_clusters_ = extra.get("n_clusters")
