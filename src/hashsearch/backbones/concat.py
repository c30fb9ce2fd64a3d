"""Several networks on one crop, their features side by side, seen by the pipeline as one backbone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import numpy as np

from hashsearch.backbones.base import Backbone


class ConcatBackbone(Backbone):
    """Backbones run on the same crop, their features concatenated in the order given.

    The pipeline, the feature cache, the ONNX export (one graph holding every part) and int8
    quantization see one backbone: `preprocess` is the first part's, and each other part
    re-normalises the input to its own mean and std inside the module (a per-channel affine
    map, equal to normalising the uint8 crop directly up to float32 rounding). All parts must
    take the same input size; a network meant for small images takes the crop through a pooling
    layer of its own (`cifar_resnet.PooledCifarResNet32`). DHFI's two networks are held this
    way in a model file (`hashsearch.model`).

    Not registered: it is built from backbones, not by name. Its `name` joins the parts' names
    with "+", e.g. "efficientnet-lite0+cifar-resnet32-pooled".

    Parameters
    ----------
    parts : sequence of Backbone
        Two or more backbones with weights (each a `weights_path`), all at one input size.

    Attributes
    ----------
    feature_dims : tuple of int
        Each part's feature width: columns ``[sum(feature_dims[:i]), sum(feature_dims[:i+1]))``
        of the features come from part i.

    Raises
    ------
    ValueError
        Fewer than two parts, or parts at different input sizes.
    """

    def __init__(self, parts: Sequence[Backbone]) -> None:
        parts = tuple(parts)
        if len(parts) < 2:
            raise ValueError(f"a ConcatBackbone joins two or more backbones, got {len(parts)}")
        sizes = [p.preprocess.input_size for p in parts]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"the parts of a ConcatBackbone read one crop: their input sizes must be equal, got "
                f"{dict(zip([p.name for p in parts], sizes))}; build them at one input size"
            )
        self.parts = parts
        # An instance's name, not the class's: it names this combination of parts.
        self.name = "+".join(p.name for p in parts)  # type: ignore[misc]
        self.preprocess = parts[0].preprocess
        self.feature_dims = tuple(int(p.feature_dim) for p in parts)
        self.feature_dim = sum(self.feature_dims)

    def config(self) -> dict:
        """Name, preprocessing, each part's config and the digest of all their weights."""
        return {
            "name": self.name,
            "preprocess": asdict(self.preprocess),
            "parts": [p.config() for p in self.parts],
            "weights_sha256": self.weights_sha256,
        }

    @property
    def weights_path(self) -> Path:
        raise AttributeError(
            f"{self.name} has no single weights file: each of its parts has one (`parts[i].weights_path`)"
        )

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 over the parts' names, input sizes and weights digests, in order."""
        import hashlib

        return hashlib.sha256("|".join(p.cache_key for p in self.parts).encode()).hexdigest()

    def torch_module(self):
        return _ConcatModule([p.torch_module() for p in self.parts], [p.preprocess for p in self.parts])

    def init_module(self):
        return _ConcatModule([p.init_module() for p in self.parts], [p.preprocess for p in self.parts])

    def save_weights(self, module, path):  # pragma: no cover - a composite is saved part by part
        raise NotImplementedError(f"{self.name}: save each part's module with that part's save_weights")


def _ConcatModule(modules, preprocesses):
    """The PyTorch module of a `ConcatBackbone` (built lazily: torch is imported only when needed)."""
    import torch
    from torch import nn

    class ConcatModule(nn.Module):
        """(n, 3, s, s) input normalised as part 0 wants -> (n, sum of widths) features."""

        def __init__(self) -> None:
            super().__init__()
            self.parts = nn.ModuleList(modules)
            first = preprocesses[0]
            m0, s0 = np.array(first.mean, np.float32), np.array(first.std, np.float32)
            for i, p in enumerate(preprocesses[1:], start=1):
                m, s = np.array(p.mean, np.float32), np.array(p.std, np.float32)
                # x_i = (x * s0 + m0 - m) / s: the crop normalised with part i's mean and std.
                scale, shift = (s0 / s).reshape(1, 3, 1, 1), ((m0 - m) / s).reshape(1, 3, 1, 1)
                # Not persistent: the state dict holds the parts' weights only, under "parts.<i>.".
                self.register_buffer(f"scale{i}", torch.from_numpy(scale), persistent=False)
                self.register_buffer(f"shift{i}", torch.from_numpy(shift), persistent=False)
            self.same = [p == first or (p.mean == first.mean and p.std == first.std) for p in preprocesses]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = []
            for i, part in enumerate(self.parts):
                xi = x if self.same[i] else x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
                out.append(part(xi))
            return torch.cat(out, dim=1)

    return ConcatModule()


__all__ = ["ConcatBackbone"]
