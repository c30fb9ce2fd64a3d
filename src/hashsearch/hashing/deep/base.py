"""DeepHasher: the fit shared by every deep hasher (head + loss + the one training loop).

A deep method is a small subclass that names its head and loss (both from registries) and
lists which head parameters it keeps; see `DLBHC`. Training runs on cached backbone features
("head" mode). After `fit`, the head's weights live in NumPy arrays ending in `_`, so encoding
needs neither torch nor autograd, and `save`/`load` work like for every other hasher.
`finetune` is the other mode: the backbone trains too, through the same head, loss and loop.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import numpy as np

from hashsearch.hashing.base import Hasher, check_features


class DeepHasher(Hasher):
    """Base of deep hashers trained on features with class labels.

    Subclasses set `head_name` and `loss_name` (registered in `deep.heads` and `deep.losses`)
    and `_param_map` (learned attribute -> head `state_dict` key; it must cover the whole
    state dict, which `fit` checks). They override `_head_params` / `_loss_params` to pass
    their own constructor parameters on. Every head's bit is ``pre-activation >= 0`` of its
    `latent` linear layer (see `deep.heads`), which is what `encode` computes in NumPy.

    Parameters
    ----------
    n_bits : int
        Code length (latent units).
    seed : int
        Seed of weight initialisation, dropout and batch shuffling.
    epochs, batch_size : int
        Passes over the training features, and rows per optimiser step.
    lr, weight_decay : float
        Adam learning rate and L2 penalty.
    dropout : float
        Dropout probability on the (standardised) input features during training.
    device : str
        Torch device for training ('cpu', 'cuda', ...); encoding always runs on the CPU in NumPy.

    Attributes
    ----------
    feature_mean_, feature_std_ : (d,) float32
        Input standardisation learned from the training features.
    classes_ : (C,) array
        The distinct training labels; class i of the head is ``classes_[i]``.
    latent_weight_ : (n_bits, d) float32, latent_bias_ : (n_bits,) float32
        The code layer.
    loss_history_ : (epochs,) float64
        Mean training loss of each epoch.
    train_seconds_ : float
        Wall time of training.
    """

    supervised: ClassVar[bool] = True
    #: Registry names of the head and the loss (set by subclasses).
    head_name: ClassVar[str | None] = None
    loss_name: ClassVar[str | None] = None
    #: Learned array attribute -> key in the head's state_dict.
    _param_map: ClassVar[dict[str, str]] = {"latent_weight_": "latent.weight", "latent_bias_": "latent.bias"}
    _common_state: ClassVar[tuple[str, ...]] = ("feature_mean_", "feature_std_", "classes_", "loss_history_")
    _state_names: ClassVar[tuple[str, ...]] = _common_state + tuple(_param_map)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._state_names = cls._common_state + tuple(cls._param_map)

    def __init__(
        self,
        n_bits: int = 48,
        seed: int = 0,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        dropout: float = 0.2,
        device: str = "cpu",
    ) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.device = device

    # -- hooks for subclasses ----------------------------------------------------------
    def _head_params(self) -> dict[str, Any]:
        """Keyword arguments of the head beyond in_dim, n_bits and n_classes."""
        return {"dropout": float(self.dropout)}

    def _loss_params(self) -> dict[str, Any]:
        """Keyword arguments of the loss beyond n_bits and n_classes."""
        return {}

    def _targets(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        """Map 1-d labels of any values to class ids 0..C-1 (setting `classes_`); return (ids, C)."""
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(
                f"hasher {self.name!r} needs one class label per row (a 1-d array), got labels of "
                f"shape {y.shape}; multi-label (n, c) targets are not supported by this method"
            )
        if y.dtype.kind == "f":
            if not (np.isfinite(y).all() and (y == np.round(y)).all()):
                raise ValueError("labels must be class ids (integers or strings), got non-integer floats")
            y = y.astype(np.int64)
        elif y.dtype.kind == "O":
            y = y.astype(str)  # saved without pickle
        elif y.dtype.kind not in "biuUS":
            raise ValueError(f"labels must be class ids (integers or strings), got dtype {y.dtype}")
        classes, ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"hasher {self.name!r} learns from class labels but all {len(y)} rows have the label "
                f"{classes[0]!r}; pass features of at least 2 classes"
            )
        self.classes_ = classes
        return ids.astype(np.int64).reshape(-1), len(classes)

    # -- fit / encode ------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        from hashsearch.hashing.deep.trainer import train

        head, loss_fn, targets, device = self._setup(X, y)
        history = train(
            head, loss_fn, self.standardize(X, _checked=True), targets,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            seed=self.seed, device=device,
        )
        self._keep(head, history)

    def _setup(self, X: np.ndarray, y: np.ndarray):
        """Check the parameters, learn the input standardisation and classes from (X, y); build
        the head and the loss. Returns (head, loss, class ids, device). Shared with `finetune`."""
        from hashsearch.hashing.deep.heads import create_head
        from hashsearch.hashing.deep.losses import create_loss
        from hashsearch.hashing.deep.trainer import resolve_device, seeded

        if not self.head_name or not self.loss_name:
            raise TypeError(f"{type(self).__name__} must set head_name and loss_name (DeepHasher is abstract)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        device = resolve_device(self.device)
        targets, n_classes = self._targets(y)

        std = X.std(axis=0, dtype=np.float64)
        std[std < 1e-12] = 1.0  # constant features: leave them at 0 after centring
        self.feature_mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.feature_std_ = std.astype(np.float32)

        with seeded(self.seed, device):
            head = create_head(self.head_name, in_dim=X.shape[1], n_bits=self.n_bits, n_classes=n_classes,
                               **self._head_params())
        loss_fn = create_loss(self.loss_name, n_bits=self.n_bits, n_classes=n_classes, **self._loss_params())
        return head, loss_fn, targets, device

    def _keep(self, head, history) -> None:
        """Copy the trained head's weights into the NumPy attributes, with the loss history."""
        state = head.state_dict()
        unsaved = set(state) - set(self._param_map.values())
        if unsaved:
            raise TypeError(
                f"{type(self).__name__}._param_map does not keep the head parameters {sorted(unsaved)}; "
                f"add them so save/load and encode see the whole trained head"
            )
        for attr, key in self._param_map.items():
            setattr(self, attr, state[key].detach().to("cpu", copy=True).numpy())
        self.loss_history_ = np.asarray(history.epoch_loss, np.float64)
        self.train_seconds_ = float(history.seconds)

    def finetune(self, backbone, pixels: np.ndarray, labels: np.ndarray, weights_out, **options):
        """"finetune" mode: train the backbone and this hasher's head together, with the same loss.

        `pixels` are the (n, s, s, 3) uint8 crops of the labelled training images at the
        backbone's input size (`backbones.extract.extract_pixels`). Writes the trained backbone's
        weights to `weights_out` and returns that backbone; this hasher is then fitted for *its*
        features. Options as in `hashing.deep.endtoend.finetune`.
        """
        from hashsearch.hashing.deep.endtoend import finetune

        return finetune(self, backbone, pixels, labels, weights_out, **options)

    def standardize(self, features: np.ndarray, _checked: bool = False) -> np.ndarray:
        """The head's input: features standardised with the training mean and std (float32)."""
        X = features if _checked else self._check_input(features)
        return ((X - self.feature_mean_) / self.feature_std_).astype(np.float32, copy=False)

    def _pre_activation(self, X: np.ndarray) -> np.ndarray:
        return self.standardize(X, _checked=True) @ self.latent_weight_.T + self.latent_bias_

    def _bits(self, X: np.ndarray) -> np.ndarray:
        # sigmoid(z) >= 0.5 and tanh(z) >= 0 both mean z >= 0: exact, and no exp needed.
        return self._pre_activation(X) >= 0

    def to_torch(self):
        """The trained head as a torch module (CPU, eval mode) rebuilt from the learned arrays.

        For fine-tuning, export, or checking the NumPy encoder: its input is `standardize(features)`.
        """
        import torch

        from hashsearch.hashing.deep.heads import create_head

        self._check_fitted()
        head = create_head(self.head_name, in_dim=int(self.n_features_in_), n_bits=self.n_bits,
                           n_classes=len(self.classes_), **self._head_params())
        head.load_state_dict({key: torch.from_numpy(np.array(getattr(self, attr))) for attr, key in self._param_map.items()})
        return head.eval()

    def _extra_meta(self) -> dict:
        return {"train_seconds": getattr(self, "train_seconds_", None)}

    def _load_extra_meta(self, extra: dict) -> None:
        self.train_seconds_ = extra.get("train_seconds")
