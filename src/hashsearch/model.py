"""A trained model: backbone weights + preprocessing + fitted hasher + training record, in one file.

`hashsearch train` writes one; `index`, `add`, `eval` and `serve` take it with ``--model``, so
images are turned into codes exactly as training left the network and the hasher, on a machine
that has neither the training data nor the training code's caches.

On disk a model is one file (by convention ``*.hsm``), a ZIP archive without compression (the
weights do not compress) holding::

    model.json      format, version, model id, backbone (name, input size, mean, std, feature
                    dimension; and its parts, for a model of several networks), hasher (method,
                    bits, parameters), the training record, and the sha256 of each file below
    backbone.npz    the backbone network's weights, one array per state-dict entry (no pickle);
                    a model of several networks (DHFI) holds each part's entries as "<i>.<key>"
    hasher.npz      the fitted hasher (`Hasher.save`: arrays and JSON, no pickle)

One file and not a folder: a model is what a user copies, mails or uploads, and one file cannot
lose a part on the way. The ZIP's CRC and the sha256 of each member make a damaged file an
error, never a wrong answer. See docs/models.md for every field.

The model id is the sha256 of what computes the codes (the backbone's name, preprocessing and
weight values, and the hasher's method, parameters and learned arrays), not of the file's bytes:
the same model saved twice has the same id. A collection records the id of the model that built
it and refuses codes of another.

Version 2 adds `backbone.parts`: a model whose features are several networks' side by side (DHFI:
the pretrained backbone and a ResNet-32), encoded through one `ConcatBackbone`. A model of one
network is still written as version 1, so a hashsearch that reads only version 1 reads it; both
versions are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashsearch.backbones import Backbone, ConcatBackbone, Preprocess, create_backbone
from hashsearch.fileio import check_header, fsync_path
from hashsearch.hashing import Hasher

FORMAT = "hashsearch-model"
#: The version written for a model of several networks (`backbone.parts`); one network is written as version 1.
FORMAT_VERSION = 2
#: The versions `TrainedModel.load` reads.
READ_VERSIONS = (1, 2)
#: The file name ending `hashsearch train` suggests.
SUFFIX = ".hsm"
_HEADER, _WEIGHTS, _HASHER = "model.json", "backbone.npz", "hasher.npz"


class ModelError(ValueError):
    """A model file that is missing, damaged, of another format version, or does not fit this hashsearch."""


@dataclass(frozen=True)
class Part:
    """One network of a model of several (`TrainedModel.parts`): its registered name, its own
    preprocessing (the same input size as the model's), and its feature width."""

    name: str
    preprocess: Preprocess
    feature_dim: int


class TrainedModel:
    """A backbone's weights and preprocessing with the hasher fitted on its features, and how they were trained.

    Build one with `TrainedModel.from_trained(backbone, hasher, record)` after training, or read
    one with `TrainedModel.load(path)`.

    Parameters
    ----------
    backbone_name : str
        A registered backbone (`hashsearch list`), e.g. "efficientnet-lite0"; for a model of
        several networks, their names joined by "+" (`ConcatBackbone.name`).
    preprocess : Preprocess
        Its input size (pixels) and per-channel mean and std (several networks: the first's).
    weights : dict of str -> ndarray
        The network's state dict as NumPy arrays (float32 weights, int64 counters); several
        networks: part i's entries under "<i>.<key>".
    hasher : Hasher
        A fitted hasher, on features of `feature_dim` dimensions.
    record : dict
        The training record (JSON-able): method, parameters, data, epochs, times, machine.
    parts : sequence of Part, optional
        The networks of a model of several (two or more), in the order of their feature columns.

    Attributes
    ----------
    id : str
        64 hex digits naming the model by content (see the module docstring).
    path : Path or None
        The file it was read from or last saved to.
    """

    def __init__(
        self,
        backbone_name: str,
        preprocess: Preprocess,
        weights: dict[str, np.ndarray],
        hasher: Hasher,
        record: dict[str, Any] | None = None,
        parts: Sequence[Part] | None = None,
    ) -> None:
        hasher._check_fitted()
        self.backbone_name = backbone_name
        self.preprocess = preprocess
        self.weights = weights
        self.hasher = hasher
        self.record = dict(record or {})
        self.parts = tuple(parts) if parts else ()
        if len(self.parts) == 1:
            raise ValueError("a model of several networks has two or more parts; give one network without parts")
        self.path: Path | None = None
        self.id = _model_id(backbone_name, preprocess, weights, hasher, self.parts)
        #: The backbones built so far, by the folder their weights were unpacked into.
        self._backbones: dict[Path, Backbone] = {}

    @classmethod
    def from_trained(cls, backbone: Backbone, hasher: Hasher, record: dict[str, Any] | None = None) -> TrainedModel:
        """The model of `backbone` (stock or fine-tuned weights, read from its weights file) and `hasher`.

        A `ConcatBackbone` (DHFI's two networks) is held part by part (`parts`).

        Raises
        ------
        ValueError
            If `hasher` is not fitted on `backbone`'s feature dimension.
        """
        if getattr(hasher, "n_features_in_", None) != backbone.feature_dim:
            raise ValueError(
                f"the hasher was fitted on {getattr(hasher, 'n_features_in_', None)}-d features but {backbone.name} "
                f"makes {backbone.feature_dim}-d ones; fit it on this backbone's features"
            )
        if isinstance(backbone, ConcatBackbone):
            weights = {f"{i}.{k}": v for i, p in enumerate(backbone.parts) for k, v in _state(p).items()}
            parts = [Part(p.name, p.preprocess, int(p.feature_dim)) for p in backbone.parts]
            return cls(backbone.name, backbone.preprocess, weights, hasher, record, parts)
        return cls(backbone.name, backbone.preprocess, _state(backbone), hasher, record)

    # -- what it computes --------------------------------------------------------------
    @property
    def n_bits(self) -> int:
        return int(self.hasher.n_bits)

    def backbone(self, cache_dir: str | os.PathLike | None = None) -> Backbone:
        """The backbone with this model's weights (written once to ``<cache_dir>/models/<id>.pt``
        for it to load; ``<id>-<i>.pt`` for part i of a model of several networks).

        Features, the feature cache, ONNX export and int8 quantization then work on it as on
        any backbone (its `cache_key` names these weights). A model of several networks gives
        a `ConcatBackbone` of them, in the order of its parts.

        Parameters
        ----------
        cache_dir : path, optional
            The cache folder (a command's ``--cache-dir``). None: the folder of the backbone
            built first if there is one, else the default cache (``$HASHSEARCH_CACHE``).

        Raises
        ------
        ModelError
            If this hashsearch's backbone of that name has another preprocessing or other layers.
        """
        from hashsearch.paths import cache_dir as default_cache

        if cache_dir is None and self._backbones:
            return next(iter(self._backbones.values()))
        folder = Path(cache_dir) if cache_dir is not None else default_cache()
        if folder in self._backbones:
            return self._backbones[folder]
        where = self.path or "this model"
        if not self.parts:
            bb = self._stock(self.backbone_name, self.preprocess, self.weights) or self._build(
                folder / "models" / f"{self.id}.pt", self.backbone_name, self.preprocess, self.weights
            )
        else:
            built = []
            for i, part in enumerate(self.parts):
                prefix = f"{i}."
                weights = {k[len(prefix) :]: v for k, v in self.weights.items() if k.startswith(prefix)}
                pb = self._build(folder / "models" / f"{self.id}-{i}.pt", part.name, part.preprocess, weights)
                if pb.feature_dim != part.feature_dim:
                    raise ModelError(
                        f"{where}: its network {i} ({part.name}) made {part.feature_dim}-d features, this "
                        f"hashsearch's makes {pb.feature_dim}-d; use the hashsearch version that trained it"
                    )
                built.append(pb)
            try:
                bb = ConcatBackbone(built)
            except ValueError as e:
                raise ModelError(f"{where}: its networks cannot be joined ({e})") from None
        if bb.feature_dim != self.hasher.n_features_in_:
            raise ModelError(
                f"{where}: its hasher takes {self.hasher.n_features_in_}-d features, its backbone makes {bb.feature_dim}-d"
            )
        self._backbones[folder] = bb
        return bb

    @staticmethod
    def _stock(name: str, preprocess: Preprocess, weights: dict[str, np.ndarray]) -> Backbone | None:
        """This hashsearch's stock backbone `name` when `weights` are its packaged weights, tensor for
        tensor (a model trained in head mode leaves them unchanged), else None. Its features are then
        those plain `index` computes, under the same feature-cache key: a folder indexed before is not
        extracted again (a fresh user's `index --model` recomputed all 959 photos of flowers12)."""
        try:
            stock = create_backbone(name, input_size=preprocess.input_size)
            packaged = _state(stock) if stock.preprocess == preprocess else {}
        except (ValueError, TypeError, OSError):
            return None
        same = packaged.keys() == weights.keys() and all(
            packaged[k].shape == np.shape(weights[k]) and np.array_equal(packaged[k], weights[k]) for k in packaged
        )
        return stock if same else None

    def _build(self, path: Path, name: str, preprocess: Preprocess, weights: dict[str, np.ndarray]) -> Backbone:
        """Backbone `name` loading `weights` (written to `path` if not there yet), checked against `preprocess`."""
        import torch

        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            torch.save({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, tmp)
            os.replace(tmp, path)
        where = self.path or "this model"
        try:
            bb = create_backbone(name, input_size=preprocess.input_size, weights=path)
        except (ValueError, TypeError) as e:
            raise ModelError(f"{where}: its backbone {name!r} cannot be built here ({e})") from None
        if bb.preprocess != preprocess:
            raise ModelError(
                f"{where}: its backbone {name} preprocesses with {asdict(preprocess)}, this "
                f"hashsearch's with {asdict(bb.preprocess)}; use the hashsearch version that trained it"
            )
        return bb

    def unseen_classes(self, labels) -> tuple[list[str], int]:
        """(the labels among `labels` that were not classes of this model's training images, sorted;
        the number of classes it was trained on). Nothing is unseen when the record names no classes
        (unlabelled training, or a model of an earlier hashsearch); None labels are skipped."""
        trained_on = set((self.record.get("data") or {}).get("classes") or [])
        if not trained_on:
            return [], 0
        return sorted({str(c) for c in labels if c is not None} - trained_on), len(trained_on)

    def describe(self) -> str:
        """One line: method, bits, backbone, input size, id."""
        mode = self.record.get("mode")
        return (
            f"{self.hasher.name} {self.n_bits} bits on {self.backbone_name} at {self.preprocess.input_size}px"
            f"{f' ({mode} mode)' if mode else ''}, model {self.id[:12]}"
        )

    # -- persistence --------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        """model.json without the file checksums (see docs/models.md); version 1 for one network."""
        backbone = {
            "name": self.backbone_name,
            "input_size": self.preprocess.input_size,
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "feature_dim": int(self.hasher.n_features_in_),
        }
        if self.parts:
            backbone["parts"] = [
                {
                    "name": p.name,
                    "input_size": p.preprocess.input_size,
                    "mean": list(p.preprocess.mean),
                    "std": list(p.preprocess.std),
                    "feature_dim": p.feature_dim,
                }
                for p in self.parts
            ]
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION if self.parts else 1,
            "id": self.id,
            "backbone": backbone,
            "hasher": {"method": self.hasher.name, "n_bits": self.n_bits, "params": self.hasher.get_params()},
            "training": self.record,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to `path` atomically (a temporary file, fsync, rename); returns the path.

        Raises
        ------
        OSError
            If the file cannot be written (nothing is left at `path` then, or the previous file).
        """
        path = Path(path)
        weights = io.BytesIO()
        np.savez(weights, **self.weights)
        with tempfile.TemporaryDirectory() as d:
            self.hasher.save(Path(d) / _HASHER)
            hasher = (Path(d) / _HASHER).read_bytes()
        parts = {_WEIGHTS: weights.getvalue(), _HASHER: hasher}
        header = {**self.header(), "files": {k: hashlib.sha256(v).hexdigest() for k, v in parts.items()}}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                z.writestr(_HEADER, json.dumps(header, indent=1))
                for name, data in parts.items():
                    z.writestr(name, data)
            fsync_path(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent if str(path.parent) else Path("."))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedModel:
        """Read a model written by `save`, checking its format version and every checksum.

        Raises
        ------
        ModelError
            If `path` is missing, not a model file, damaged, of another version, or its content
            does not give the id it declares.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file {path} not found; write one with `hashsearch train ... --out {path}`")
        try:
            with zipfile.ZipFile(path) as z:
                header = json.loads(z.read(_HEADER).decode())
                version = header.get("version") if isinstance(header, dict) else None
                check_header(header, FORMAT, version if version in READ_VERSIONS else FORMAT_VERSION, path)
                files = header.get("files")
                if not isinstance(files, dict) or set(files) != {_WEIGHTS, _HASHER}:
                    raise ValueError("its list of files is missing or wrong")
                parts = {name: z.read(name) for name in files}
        except ModelError:
            raise
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            if "format" in str(e) and "version" in str(e):
                raise ModelError(str(e)) from None
            raise ModelError(
                f"{path} is not a readable hashsearch model ({e}); copy it again or retrain with `hashsearch train`"
            ) from None
        for name, data in parts.items():
            if hashlib.sha256(data).hexdigest() != files[name]:
                raise ModelError(f"{path} is damaged: {name} fails its checksum; copy it again or retrain")
        try:
            with np.load(io.BytesIO(parts[_WEIGHTS]), allow_pickle=False) as z:
                weights = {k: z[k] for k in z.files}
            hasher = Hasher.load(io.BytesIO(parts[_HASHER]))
            bb = header["backbone"]
            networks = [
                Part(p["name"], _preprocess(p), int(p["feature_dim"]))
                for p in (bb.get("parts") or [] if header["version"] >= 2 else [])
            ]
            model = cls(bb["name"], _preprocess(bb), weights, hasher, header.get("training"), networks)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(
                f"{path} cannot be loaded ({type(e).__name__}: {e}); retrain it with this hashsearch"
            ) from None
        if model.id != header.get("id"):
            raise ModelError(
                f"{path} is damaged: its content gives model id {model.id[:12]}, it declares {header.get('id')}"
            )
        model.path = path
        return model


def _state(backbone: Backbone) -> dict[str, np.ndarray]:
    """The state dict of the weights file `backbone` loads (fine-tuned or packaged), as NumPy arrays."""
    import torch

    state = torch.load(backbone.weights_path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def _preprocess(entry: dict) -> Preprocess:
    return Preprocess(int(entry["input_size"]), tuple(entry["mean"]), tuple(entry["std"]))  # type: ignore[arg-type]


def _model_id(
    name: str,
    preprocess: Preprocess,
    weights: dict[str, np.ndarray],
    hasher: Hasher,
    parts: Sequence[Part] = (),
) -> str:
    """sha256 of what computes the codes: backbone name, preprocessing (each part's too), weight
    values, hasher (see module doc). A model of one network hashes as in version 1."""
    h = hashlib.sha256()
    meta: dict[str, Any] = {
        "backbone": name,
        "preprocess": asdict(preprocess),
        "method": hasher.name,
        "params": hasher.get_params(),
        "n_features_in": int(hasher.n_features_in_),
    }
    if parts:
        meta["parts"] = [
            {"name": p.name, "preprocess": asdict(p.preprocess), "feature_dim": p.feature_dim} for p in parts
        ]
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for prefix, arrays in (("w", weights), ("h", hasher._get_state())):
        for k in sorted(arrays):
            a = np.ascontiguousarray(arrays[k])
            if a.dtype.kind in "OU":
                a = np.char.encode(a.astype(str), "utf-8") if a.dtype.kind == "U" else a.astype(str)
            h.update(f"{prefix}:{k}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


__all__ = ["FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "SUFFIX", "ModelError", "Part", "TrainedModel"]
