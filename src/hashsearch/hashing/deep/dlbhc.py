"""DLBHC (Lin et al., CVPR-W 2015): a sigmoid latent layer learned point-wise through a classifier."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import expit, softmax

from hashsearch.hashing.base import register_hasher
from hashsearch.hashing.deep.base import DeepHasher


@register_hasher("dlbhc")
class DLBHC(DeepHasher):
    """Deep learning of binary hash codes: features -> latent layer H of `n_bits` sigmoid units
    -> classification layer, trained with softmax cross-entropy on class labels; bit = H >= 0.5.

    Trains on cached backbone features (the paper fine-tunes the whole CNN; here the backbone
    is frozen and only H and the classifier are learned). Parameters are those of `DeepHasher`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); X = (rng.normal(size=(300, 16)) + 3 * y[:, None]).astype("float32")
    >>> h = DLBHC(n_bits=16, epochs=5).fit(X, y)
    >>> h.encode(X).n_bits, h.predict(X[:2]).shape
    (16, (2,))

    Attributes
    ----------
    classifier_weight_ : (C, n_bits) float32, classifier_bias_ : (C,) float32
        The classification layer, kept so the model can also classify (`predict`).
    Others as in `DeepHasher`.
    """

    head_name: ClassVar[str] = "latent-sigmoid"
    loss_name: ClassVar[str] = "cross-entropy"
    _param_map: ClassVar[dict[str, str]] = {
        **DeepHasher._param_map,
        "classifier_weight_": "classifier.weight",
        "classifier_bias_": "classifier.bias",
    }

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C), columns in the order of `classes_`."""
        X = self._check_input(features)
        h = expit(self._pre_activation(X))
        return softmax(h @ self.classifier_weight_.T + self.classifier_bias_, axis=1)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The most probable class label of each row (values from `classes_`)."""
        return self.classes_[self.predict_proba(features).argmax(axis=1)]
