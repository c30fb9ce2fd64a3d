"""The one interface every hasher implements, and its file format."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashsearch.codes import pack_bits
from hashsearch.fileio import check_header
from hashsearch.registry import Registry
from hashsearch.types import Codes
from hashsearch.validation import check_features, check_int, check_is_fitted

FORMAT = "hashsearch-hasher"
# 2: deep hashers store their head as "head.<layer>.<weight|bias>" arrays with its layer order.
FORMAT_VERSION = 2

hashers: Registry = Registry("hasher", builtins="hashsearch.hashing")

#: Class decorator: register a plug-in under a name (also sets `cls.name`).
register_hasher = hashers.register
#: Names of all registered plug-ins of this family.
list_hashers = hashers.names
#: Build a registered plug-in by name, e.g. ``create_hasher("itq", n_bits=64)``.
create_hasher = hashers.create


class Hasher:
    """Learns a map from real feature vectors to `n_bits`-bit binary codes.

    Subclasses implement `_fit(X, y)` (set learned attributes ending in `_`) and
    `_bits(X)` (return an (n, n_bits) 0/1 or bool array), and list their learned arrays in
    `_state_names`. The constructor only stores parameters (scikit-learn style), so
    `get_params()` can rebuild an identical, unfitted hasher.
    """

    name: ClassVar[str] = "?"
    #: True when `fit` needs labels.
    supervised: ClassVar[bool] = False
    #: True when the bits are random draws, not learned from the images (LSH, SKLSH): any number of
    #: images fits them (`hashing.unsupervised.few_images` then says nothing).
    data_independent: ClassVar[bool] = False
    #: Names of the learned array attributes saved by `save`.
    _state_names: ClassVar[tuple[str, ...]] = ()
    #: The backbones whose features the method is defined on, concatenated in this order;
    #: None is the run's backbone. RITQ is ITQ on its own CIFAR ResNet; DHFI fuses two networks.
    #: The evaluation runner provides them (`experiments.runner.run_methods`); `fit` takes any features.
    feature_backbones: ClassVar[tuple[str | None, ...]] = (None,)

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed

    # -- parameters --------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, read back from attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fit / encode ------------------------------------------------------------------
    def fit(self, features: np.ndarray, labels: np.ndarray | None = None) -> Hasher:
        """Learn the hash functions from `features` (n, d), with `labels` if supervised.

        `labels` is an (n,) array of integer class ids or an (n, c) 0/1 multi-label matrix.
        """
        X = check_features(features, "features")
        self._check_n_bits()
        y = None
        if labels is not None:
            y = np.asarray(labels)
            if y.shape[0] != X.shape[0]:
                raise ValueError(f"labels has {y.shape[0]} rows but features has {X.shape[0]}; pass one label per row")
        if self.supervised and y is None:
            raise ValueError(f"hasher {self.name!r} is supervised: pass labels to fit()")
        self._fit(X, y)
        # Set last: a fit that raises must not leave the hasher looking fitted.
        self.n_features_in_ = X.shape[1]
        return self

    def _check_n_bits(self) -> None:
        check_int("n_bits", self.n_bits, low=1, high=4096)

    def encode(self, features: np.ndarray) -> Codes:
        """Packed codes of `features` (n, d)."""
        X = self._check_input(features)
        if X.shape[0] == 0:
            return Codes(np.zeros((0, (self.n_bits + 7) // 8), np.uint8), self.n_bits)
        bits = np.asarray(self._bits(X))
        return pack_bits(bits.astype(np.uint8))

    def _check_input(self, features: np.ndarray) -> np.ndarray:
        """Features checked against the fitted dimension, as a float array."""
        self._check_fitted()
        X = check_features(features, "features", allow_empty=True)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"features have {X.shape[1]} dimensions but this hasher was fitted on "
                f"{self.n_features_in_}; encode features from the same backbone"
            )
        return X

    def _check_fitted(self) -> None:
        check_is_fitted(self)

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _bits(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write parameters and learned arrays to `path` (.npz, no pickle), atomically."""
        self._check_fitted()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "method": self.name,
            "params": self.get_params(),
            "n_features_in": int(self.n_features_in_),
            "extra": self._extra_meta(),
        }
        arrays = {f"state.{k}": v for k, v in self._get_state().items()}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays})  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike) -> Hasher:
        """Read a hasher written by `save`; a damaged or foreign file raises ValueError."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["__meta__"]).decode())
                arrays = {k[6:]: z[k] for k in z.files if k.startswith("state.")}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ValueError(f"{path} is not a readable hashsearch hasher file: {e}") from e
        except Exception as e:  # zipfile.BadZipFile and friends
            raise ValueError(f"{path} is not a readable hashsearch hasher file: {e}") from e
        check_header(meta, FORMAT, FORMAT_VERSION, path)
        hasher = create_hasher(meta["method"], **meta["params"])
        try:
            hasher._set_state(arrays)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        hasher.n_features_in_ = meta["n_features_in"]
        hasher._load_extra_meta(meta.get("extra", {}))
        return hasher

    def _get_state(self) -> dict[str, np.ndarray]:
        """The learned arrays that `save` writes, by name (default: the `_state_names` attributes)."""
        return {k: np.asarray(getattr(self, k)) for k in self._state_names}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `_get_state` returned; a ValueError names the arrays that are missing."""
        missing = set(self._state_names) - set(arrays)
        if missing:
            raise ValueError(f"the learned arrays {sorted(missing)} are missing")
        for k, v in arrays.items():
            setattr(self, k, v)

    def _extra_meta(self) -> dict:
        """JSON-able learned values beyond arrays (override when needed)."""
        return {}

    def _load_extra_meta(self, extra: dict) -> None:
        pass
