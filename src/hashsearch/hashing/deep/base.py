"""DeepHasher: a head, a loss and the optimiser settings, composed and trained by the one loop.

A deep hashing method is a choice of head (`deep.heads`), loss (`deep.losses`) and their
parameters: ``DeepHasher(head="latent-tanh", loss="dpsh", loss_params={"eta": 0.1})`` is DPSH.
The published methods are registered presets of this one class (`deep.presets`): DLBHC, DPSH,
DSH, DFEH, HashNet, CSQ. Training runs on cached backbone features ("head" mode, `fit`) or
through the backbone ("finetune" mode, `finetune`), on the same loop. After training, the
head's weights live in NumPy arrays, so encoding needs neither torch nor autograd, and
`save`/`load` work like for every other hasher.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any, ClassVar

import numpy as np

from hashsearch.hashing.base import Hasher, register_hasher
from hashsearch.validation import check_real

#: A line as head-mode training starts and ends, and one at most every `trainer.train`'s log_seconds
#: while its bar is hidden (stderr not a terminal), at INFO: `hashsearch train` shows them.
logger = logging.getLogger(__name__)


@register_hasher("deep")
class DeepHasher(Hasher):
    """A deep hasher trained on features with class labels: head + loss + optimiser settings.

    Parameters
    ----------
    n_bits : int
        Code length (units of the head's code layer).
    head : str
        A registered head (`hashsearch.hashing.deep.heads.list_heads()`), e.g. "latent-sigmoid"
        (DLBHC), "latent-tanh" (DPSH, DSH, HashNet, CSQ), "feature-enhance" (DFEH).
    loss : str
        A registered loss (`hashsearch.hashing.deep.losses.list_losses()`), e.g. "cross-entropy",
        "dpsh", "dsh", "dfeh", "hashnet", "csq".
    head_params, loss_params : dict, optional
        Keyword arguments of the head (beyond in_dim, n_bits, n_classes, dropout) and of the loss
        (beyond n_bits, n_classes; a loss that takes a `seed` gets this hasher's unless given).
    seed : int
        Seed of weight initialisation, dropout and batch shuffling.
    epochs, batch_size : int
        Passes over the training set, and rows per optimiser step.
    lr, weight_decay : float
        Adam's learning rate and L2 penalty.
    dropout : float
        Dropout probability inside the head during training.
    device : str
        Torch device for training ('cpu', 'cuda', ...); encoding always runs on the CPU in NumPy.

    Attributes
    ----------
    feature_mean_, feature_std_ : (d,) float32
        Input standardisation learned from the training features.
    classes_ : (C,) array
        The distinct training labels; class i of the head is ``classes_[i]``.
    head_state_ : dict of str -> float32 array
        The trained head's weights by `state_dict` key ("latent.weight" is (n_bits, d') ...).
    code_layers_ : (L,) str array, activation_ : str array
        The head's linear layers from input to code (ReLU between), and its activation.
    loss_history_ : (epochs,) float64
        Mean training loss of each epoch.
    epochs_run_ : int
        The epochs training ran: those `epochs` asks for (an unsupervised hasher's
        ``epochs=None``: those its training set's size makes), fewer when validation stopped it
        early; in finetune mode the head stage's and the joint stage's together (the length of
        `loss_history_`).
    train_seconds_ : float
        Wall time of training.
    """

    supervised: ClassVar[bool] = True
    _state_names: ClassVar[tuple[str, ...]] = (
        "feature_mean_",
        "feature_std_",
        "classes_",
        "loss_history_",
        "code_layers_",
        "activation_",
    )
    #: The training settings, shared by every preset (the rest of a preset's parameters go to its head or loss).
    training_params: ClassVar[tuple[str, ...]] = (
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "dropout",
        "device",
    )
    #: Where the head-mode lines go (an unsupervised hasher's: the logger `hashsearch index` shows).
    _logger: ClassVar[logging.Logger] = logger
    #: Training on cached features, the checkpoint is written at most this often (seconds), and after
    #: the last epoch: those epochs take milliseconds (2,000 one-step epochs of 96 rows spent 4.3 s of
    #: 10.7 s writing a checkpoint after each), and a killed run loses at most these seconds.
    head_checkpoint_seconds: ClassVar[float] = 5.0

    def __init__(
        self,
        n_bits: int = 48,
        head: str = "latent-tanh",
        loss: str = "dpsh",
        head_params: dict[str, Any] | None = None,
        loss_params: dict[str, Any] | None = None,
        seed: int = 0,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        dropout: float = 0.2,
        device: str = "cpu",
    ) -> None:
        self.n_bits = n_bits
        self.head = head
        self.loss = loss
        self.head_params = head_params
        self.loss_params = loss_params
        self.seed = seed
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.device = device

    # -- parameters ----------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters; a preset's hasher gives its preset's (e.g. DPSH's `eta`)."""
        preset = getattr(self, "_preset", None)
        return preset.params_of(self) if preset is not None else super().get_params()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{self.name}({args})"

    # -- building and training ------------------------------------------------------------
    def _build(self, X: np.ndarray, y: np.ndarray):
        """Check the parameters, learn the input standardisation and classes from (X, y), and
        build the head (seeded) and the loss. Returns (head, loss, class ids, device)."""
        from hashsearch.hashing.deep.heads import create_head
        from hashsearch.hashing.deep.losses import create_loss, losses
        from hashsearch.hashing.deep.trainer import resolve_device, seeded

        check_real("dropout", self.dropout, low=0, high=1, high_open=True, noun="probability")
        device = resolve_device(self.device)
        targets, n_classes = self._targets(y)

        std = X.std(axis=0, dtype=np.float64)
        std[std < 1e-12] = 1.0  # constant features: leave them at 0 after centring
        self.feature_mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.feature_std_ = std.astype(np.float32)

        with seeded(self.seed, device):
            head = self._new_head(create_head, X.shape[1], n_classes)
        loss_params = dict(self.loss_params or {})
        if "seed" in inspect.signature(losses.get(self.loss)).parameters:
            loss_params.setdefault("seed", int(self.seed))
        loss_fn = create_loss(self.loss, n_bits=self.n_bits, n_classes=n_classes, **loss_params)
        return head, loss_fn, targets, device

    def _new_head(self, create_head, in_dim: int, n_classes: int):
        return create_head(
            self.head,
            in_dim=in_dim,
            n_bits=self.n_bits,
            n_classes=n_classes,
            dropout=float(self.dropout),
            **(self.head_params or {}),
        )

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

    def _train_targets(self, X: np.ndarray, loss_fn, targets):
        """What the training loop fits to, given the training features X (n, d) and `_build`'s
        targets: the class ids here; an unsupervised hasher's pseudo-targets of X."""
        return targets

    def _settings(self, device) -> dict[str, Any]:
        return dict(
            batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, seed=self.seed, device=device
        )

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        self._fit_head(X, y)

    def _fit_head(self, X: np.ndarray, y: np.ndarray | None, **loop):
        """Head mode, for `fit` and `endtoend.fit_head`: build, train the head on the features X
        with `loop`'s options of `trainer.train` (validate, patience, checkpoint, desc, progress),
        and keep it; logs a line as training starts and one as it ends. Returns the `TrainHistory`."""
        from hashsearch.data.sources import plural
        from hashsearch.hashing.deep.trainer import train

        head, loss_fn, targets, device = self._build(X, y)
        targets = self._train_targets(X, loss_fn, targets)
        epochs = self._epochs_for(len(X))
        if isinstance(epochs, int) and isinstance(self.batch_size, int) and epochs > 0 and self.batch_size > 0:
            steps = epochs * math.ceil(len(X) / self.batch_size)
            self._logger.info(
                "%s: training the hash layer, %s (%s)...",
                self.name,
                plural(epochs, "epoch"),
                plural(steps, "optimiser step"),
            )
        loop = {
            "desc": f"training {self.name}",
            "log": self._logger,
            "checkpoint_seconds": self.head_checkpoint_seconds,
            **loop,
        }
        history = train(
            head, loss_fn, self.standardize(X, _checked=True), targets, epochs=epochs, **self._settings(device), **loop
        )
        self._keep(head, history)
        ran = len(history.epoch_loss)
        how = f"; stopped early, the best at epoch {history.best_epoch}" if history.stopped_early else ""
        again = f", resumed after epoch {history.resumed_at}" if history.resumed_at else ""
        self._logger.info(
            "%s: trained the hash layer in %.1fs (%s%s%s)", self.name, history.seconds, plural(ran, "epoch"), again, how
        )
        return history

    def _epochs_for(self, n_rows: int) -> int:
        """The epochs to train on `n_rows` rows: `epochs` (a subclass may derive them when it is None)."""
        return self.epochs

    def _keep(self, head, history) -> None:
        """Copy the trained head's weights into NumPy arrays, with the loss history."""
        self.head_state_ = {k: v.detach().to("cpu", copy=True).numpy() for k, v in head.state_dict().items()}
        self.code_layers_ = np.array(head.code_layers)
        self.activation_ = np.array(head.activation)
        self.loss_history_ = np.asarray(history.epoch_loss, np.float64)
        self.epochs_run_ = len(self.loss_history_)
        self.train_seconds_ = float(history.seconds)

    def finetune(
        self,
        backbone,
        pixels: np.ndarray,
        labels: np.ndarray,
        weights_out: str | os.PathLike,
        *,
        epochs: int | None = None,
        recipe=None,
        pretrained: bool = True,
        progress: bool = True,
        loop: dict | None = None,
        warm_loop: dict | None = None,
    ):
        """ "finetune" mode: the head and loss trained together with the backbone; returns the tuned backbone.

        `pixels` are the (n, s, s, 3) uint8 crops of the labelled training images at the
        backbone's input size (`hashsearch.pipeline.local.extract_pixels`). Two stages on the
        one training loop, with this hasher's loss and settings: first the head alone on the
        starting backbone's features for `epochs` of this hasher (head mode, seconds), so that
        the backbone's first gradients come from a trained head and not a random one; then head
        and backbone together for `epochs` (default: the recipe's, else this hasher's) on
        augmented images (see `endtoend.ImageModel`), trained as `recipe` says
        (`endtoend.Recipe`: the backbone at ``lr * trunk_lr_scale``, schedule, augmentation,
        weight averaging, label smoothing, progressive resizing; default the "paper" recipe:
        constant rate, crop/flip, the backbone at a tenth of the head's rate). The input
        standardisation is learned from the starting backbone's features and then held fixed;
        `loss_history_` holds both stages' epochs. With `pretrained` the backbone's batch-norm
        statistics stay frozen and its weights get no L2. Writes the trained backbone's weights
        to `weights_out` and returns that backbone; this hasher then encodes *its* features.
        `loop` and `warm_loop` go to the training loop of the joint and the head-alone stage
        (`trainer.train`'s validate, patience, checkpoint).

        Raises
        ------
        ValueError
            If `pixels` are not uint8 crops at the backbone's input size, or do not match `labels`;
            a recipe with label smoothing for a loss without class targets.
        """
        from hashsearch.hashing.deep.endtoend import ImageModel, Recipe, check_pixels, trained_backbone, trunk_features
        from hashsearch.hashing.deep.trainer import TrainHistory, resolve_device, seeded, train

        pixels = check_pixels(pixels, labels, backbone)
        self._check_n_bits()
        recipe = recipe or Recipe()
        dev = resolve_device(self.device)
        with seeded(self.seed, dev):
            trunk = backbone.init_module()
        X0 = trunk_features(trunk, pixels, backbone.preprocess, dev)
        head, loss_fn, targets, dev = self._build(X0, np.asarray(labels))
        targets = self._train_targets(X0, loss_fn, targets)
        if recipe.label_smoothing:
            if not hasattr(loss_fn, "label_smoothing"):
                raise ValueError(
                    f"label_smoothing={recipe.label_smoothing}: loss {self.loss!r} has no class targets to smooth "
                    "(DLBHC's cross-entropy and CSQ's hash centres do); leave it at 0"
                )
        settings = dict(self._settings(dev), progress=progress)
        warm = train(
            head,
            loss_fn,
            self.standardize(X0, _checked=True),
            targets,
            epochs=self._epochs_for(len(X0)),
            **settings,
            # The head alone on cached features: epochs of milliseconds (see head_checkpoint_seconds).
            **{"checkpoint_seconds": self.head_checkpoint_seconds, "log": self._logger, **(warm_loop or {})},
        )
        # The head stage's head (its best epoch): a caller may keep it should the joint stage end worse.
        self.head_stage_state_ = {k: v.detach().to("cpu", copy=True).numpy() for k, v in head.state_dict().items()}
        model = ImageModel(
            trunk,
            head,
            backbone.preprocess,
            self.feature_mean_,
            self.feature_std_,
            augment=recipe.augment,
            trunk_lr_scale=recipe.trunk_lr_scale,
            pretrained=pretrained,
            recipe=recipe,
        )
        if recipe.label_smoothing:
            loss_fn.label_smoothing = float(recipe.label_smoothing)  # the joint stage only
        joint = train(
            model,
            loss_fn,
            pixels,
            targets,
            epochs=epochs or recipe.epochs or self._epochs_for(len(X0)),
            **settings,
            cosine=recipe.schedule == "cosine",
            ema=recipe.ema,
            **{"log": self._logger, **(loop or {})},
        )
        if recipe.label_smoothing:
            loss_fn.label_smoothing = 0.0
        self._keep(head, TrainHistory(warm.epoch_loss + joint.epoch_loss, warm.seconds + joint.seconds))
        self.head_history_, self.joint_history_ = warm, joint
        self.n_features_in_ = X0.shape[1]
        return trained_backbone(backbone, trunk, weights_out)

    # -- encoding (NumPy) ---------------------------------------------------------------
    def standardize(self, features: np.ndarray, _checked: bool = False) -> np.ndarray:
        """The head's input: features standardised with the training mean and std (float32)."""
        X = features if _checked else self._check_input(features)
        return ((X - self.feature_mean_) / self.feature_std_).astype(np.float32, copy=False)

    def _pre_activation(self, X: np.ndarray) -> np.ndarray:
        h = self.standardize(X, _checked=True)
        layers = [str(x) for x in self.code_layers_]
        for i, layer in enumerate(layers):
            h = h @ self.head_state_[f"{layer}.weight"].T + self.head_state_[f"{layer}.bias"]
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        return h

    def _bits(self, X: np.ndarray) -> np.ndarray:
        # sigmoid(z) >= 0.5 and tanh(z) >= 0 both mean z >= 0: exact, and no exp needed.
        return self._pre_activation(X) >= 0

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C), columns in the order of `classes_`, for a head with a
        classifier on its codes (DLBHC's 'latent-sigmoid'); a TypeError for other heads."""
        from scipy.special import expit, softmax

        X = self._check_input(features)
        if "classifier.weight" not in self.head_state_:
            raise TypeError(f"head {self.head!r} has no classifier: predict needs one such as 'latent-sigmoid' (DLBHC)")
        z = self._pre_activation(X)
        codes = expit(z) if str(self.activation_) == "sigmoid" else np.tanh(z)
        return softmax(codes @ self.head_state_["classifier.weight"].T + self.head_state_["classifier.bias"], axis=1)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The most probable class label of each row (values from `classes_`)."""
        return self.classes_[self.predict_proba(features).argmax(axis=1)]

    def to_torch(self):
        """The trained head as a torch module (CPU, eval mode) rebuilt from the learned arrays.

        For fine-tuning, export, or checking the NumPy encoder: its input is `standardize(features)`.
        """
        import torch

        from hashsearch.hashing.deep.heads import create_head

        self._check_fitted()
        head = self._new_head(create_head, int(self.n_features_in_), len(self.classes_))
        head.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.head_state_.items()})
        return head.eval()

    # -- persistence ----------------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        return {**super()._get_state(), **{f"head.{k}": np.asarray(v) for k, v in self.head_state_.items()}}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        head = {k[5:]: v for k, v in arrays.items() if k.startswith("head.")}
        super()._set_state({k: v for k, v in arrays.items() if not k.startswith("head.")})
        missing = [
            f"head.{layer}.{p}" for layer in self.code_layers_ for p in ("weight", "bias") if f"{layer}.{p}" not in head
        ]
        if missing:
            raise ValueError(f"the learned arrays {missing} are missing")
        self.head_state_ = head

    def _extra_meta(self) -> dict:
        return {
            "train_seconds": getattr(self, "train_seconds_", None),
            "epochs_run": getattr(self, "epochs_run_", None),
        }

    def _load_extra_meta(self, extra: dict) -> None:
        self.train_seconds_ = extra.get("train_seconds")
        # (a file saved before epochs_run was recorded: the loss history has one value per epoch run)
        self.epochs_run_ = int(extra.get("epochs_run") or len(self.loss_history_))
