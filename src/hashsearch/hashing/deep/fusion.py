"""DHFI: codes fused from two hashing subnetworks of different architectures."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hashsearch.hashing.base import Hasher, create_hasher, register_hasher
from hashsearch.hashing.deep.base import DeepHasher

_SUBNETS = ("a", "b")


@register_hasher("dhfi")
class DHFI(Hasher):
    """DHFI (Duan et al., "Deep hashing based fusing index method for large-scale image
    retrieval", Applied Computational Intelligence and Soft Computing 2017): two DPSH
    subnetworks on the features of two networks of different architectures, their codes
    concatenated.

    The input is the two networks' features side by side: columns ``[0, feature_dims[0])`` from
    the first (the run's pretrained backbone), the rest from the second ('cifar-resnet32',
    trained from scratch); the runner concatenates them (`feature_backbones`). Subnetwork a
    gets ``ceil(n_bits / 2)`` bits, b the rest, so the fused code has `n_bits` bits, the same
    total as either subnetwork alone (rows 'dpsh' on the pretrained features; 'dhfi' with
    ``use="b"`` on the ResNet's). `fit` (head mode) trains each subnetwork's DPSH head on its
    network's cached features; `finetune` trains both networks end to end, as the paper does.

    Parameters
    ----------
    feature_dims : (int, int), optional
        Widths of the two feature blocks; None splits the columns in half.
    use : {"both", "a", "b"}
        "a" or "b": one subnetwork alone with all `n_bits` bits (the paper's comparison).
    Others as in the "dpsh" preset (`hashsearch.hashing.deep.presets`); subnetwork b is seeded
    with ``seed + 1``.

    Attributes
    ----------
    subnets_ : dict of {"a", "b"} -> DeepHasher
        The fitted DPSH subnetworks in use.
    """

    supervised: ClassVar[bool] = True
    feature_backbones: ClassVar[tuple[str | None, ...]] = (None, "cifar-resnet32")

    def __init__(
        self,
        n_bits: int = 48,
        seed: int = 0,
        feature_dims: tuple[int, int] | None = None,
        use: str = "both",
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        dropout: float = 0.2,
        device: str = "cpu",
        eta: float = 0.1,
    ) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.feature_dims = feature_dims
        self.use = use
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.device = device
        self.eta = eta

    def _blocks(self, d: int) -> dict[str, slice]:
        dims = self.feature_dims
        if dims is None:
            dims = (d // 2, d - d // 2)
        dims = tuple(int(x) for x in dims)
        if len(dims) != 2 or min(dims) < 1 or sum(dims) != d:
            raise ValueError(
                f"feature_dims must be two positive widths summing to the feature dimension {d}, got "
                f"{self.feature_dims!r}; pass the widths of the two networks' features"
            )
        return {"a": slice(0, dims[0]), "b": slice(dims[0], d)}

    def _bit_split(self) -> dict[str, int]:
        if self.use not in ("both", "a", "b"):
            raise ValueError(f"use must be 'both', 'a' or 'b', got {self.use!r}")
        if self.use != "both":
            return {self.use: int(self.n_bits)}
        if self.n_bits < 2:
            raise ValueError(f"DHFI fuses two codes: n_bits must be at least 2, got {self.n_bits}")
        return {"a": (int(self.n_bits) + 1) // 2, "b": int(self.n_bits) // 2}

    def _subnet(self, name: str, n_bits: int) -> DeepHasher:
        training = {k: getattr(self, k) for k in DeepHasher.training_params if k != "seed"}
        return create_hasher("dpsh", n_bits=n_bits, seed=self.seed + (name == "b"), eta=self.eta, **training)

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        blocks = self._blocks(X.shape[1])
        self.subnets_ = {
            name: self._subnet(name, bits).fit(X[:, blocks[name]], y) for name, bits in self._bit_split().items()
        }

    def finetune(self, backbones, pixels, labels, weights_out, *, subnet_options=None, **options) -> list:
        """ "finetune" mode: each subnetwork in use fine-tunes its own network with DPSH's loss.

        `backbones`, `pixels` and `weights_out` hold one entry per network of
        `feature_backbones` (the pretrained backbone, then the ResNet), `pixels` each at that
        network's input size; a network whose subnetwork is not in use (``use="a"`` or "b") is
        returned as it came. Each subnetwork is the "dpsh" preset's `DeepHasher.finetune` (options
        as there), so the fused code comes from two networks trained end to end, as in the paper.
        `subnet_options(name, subnetwork, backbone)`, if given, returns more options for one
        subnetwork ("a" or "b"), such as its own `loop` and `warm_loop` (validation on its own
        codes, its own checkpoint files: `hashsearch train`). Returns the networks; this hasher
        then encodes their features side by side (widths in `feature_dims`).
        """
        self._check_n_bits()
        bits = self._bit_split()
        if not len(backbones) == len(pixels) == len(weights_out) == len(_SUBNETS):
            raise ValueError(
                f"DHFI fine-tunes {len(_SUBNETS)} networks: pass {len(_SUBNETS)} backbones, pixel arrays "
                f"and weights paths, got {len(backbones)}, {len(pixels)} and {len(weights_out)}"
            )
        tuned = list(backbones)
        self.subnets_ = {}
        for i, name in enumerate(_SUBNETS):
            if name in bits:
                sub = self._subnet(name, bits[name])
                more = subnet_options(name, sub, backbones[i]) if subnet_options is not None else {}
                tuned[i] = sub.finetune(backbones[i], pixels[i], labels, weights_out[i], **options, **more)
                self.subnets_[name] = sub
        self.feature_dims = [int(b.feature_dim) for b in tuned]
        self.n_features_in_ = sum(self.feature_dims)
        return tuned

    @property
    def loss_history_(self) -> np.ndarray:
        """The per-epoch training loss, summed over the subnetworks trained."""
        self._check_fitted()
        return sum(sub.loss_history_ for sub in self.subnets_.values())

    def _bits(self, X: np.ndarray) -> np.ndarray:
        blocks = self._blocks(X.shape[1])
        return np.concatenate([self.subnets_[name]._bits(X[:, blocks[name]]) for name in self._bit_split()], axis=1)

    # -- persistence: each subnetwork's arrays under its name ("a.feature_mean_", ...) --------
    def _get_state(self) -> dict[str, np.ndarray]:
        return {f"{name}.{k}": v for name, sub in self.subnets_.items() for k, v in sub._get_state().items()}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        subnets = {}
        for name, bits in self._bit_split().items():
            sub = self._subnet(name, bits)
            sub._set_state({k[len(name) + 1 :]: v for k, v in arrays.items() if k.startswith(name + ".")})
            sub.n_features_in_ = len(sub.feature_mean_)
            subnets[name] = sub
        self.subnets_ = subnets
