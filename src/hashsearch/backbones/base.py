"""The backbone interface: an image feature extractor that carries its own preprocessing."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from hashsearch.fileio import file_sha256
from hashsearch.registry import Registry

backbones: Registry = Registry("backbone", builtins="hashsearch.backbones")

#: Class decorator: register a plug-in under a name (also sets `cls.name`).
register_backbone = backbones.register
#: Names of all registered plug-ins of this family.
list_backbones = backbones.names
#: Build a registered plug-in by name, e.g. ``create_backbone("efficientnet-lite0", input_size=128)``.
create_backbone = backbones.create


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: resize the shorter side to `input_size`, centre-crop a
    square, scale to [0, 1], then normalise with `mean` and `std` per RGB channel."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> a (3, input_size, input_size) float32 array."""
        return self.normalize(self.crop(image))

    def crop(self, image: Image.Image) -> np.ndarray:
        """The resize and centre crop: an RGB PIL image -> (input_size, input_size, 3) uint8 pixels.

        Inference takes these (a quarter of the bytes of the normalised float32 array, where
        they cross processes); `normalize` gives exactly the same values afterwards.
        """
        s = self.input_size
        w, h = image.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        left, top = (nw - s) // 2, (nh - s) // 2
        if (nw, nh) != (w, h):
            # Resize only the part the crop keeps: Pillow's `box`, in source pixels, is the crop
            # of the (nw, nh) resize mapped back: each output pixel sees the same source pixels,
            # and the values agree with resize-then-crop up to rounding (+-2 levels, tested).
            # A quarter fewer output pixels for a 4:3 photo.
            sx, sy = w / nw, h / nh
            box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
            image = image.resize((s, s), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
        elif (nw, nh) != (s, s):
            image = image.crop((left, top, left + s, top + s))
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(..., s, s, 3) uint8 pixels -> (..., 3, s, s) float32, scaled to [0, 1] and normalised.

        Each value is ``(v * float32(1 / 255) - mean) / std`` in float32; it is read from a
        256-entry table per channel after moving the channels first in uint8, which is faster
        than the float arithmetic and gives the same bits. (ONNX extractors do this inside the
        graph instead, see `hashsearch.backbones.runtime.pixel_input_model`.)
        """
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            raise ValueError(f"normalize takes uint8 pixels, got {pixels.dtype}; pass the crops of `crop`")
        levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
        channels_first = np.ascontiguousarray(np.moveaxis(pixels, -1, -3))
        out = np.empty(channels_first.shape, np.float32)
        for c in range(3):
            table = (levels - np.float32(self.mean[c])) / np.float32(self.std[c])
            np.take(table, channels_first[..., c, :, :], out=out[..., c, :, :])
        return out


class Backbone:
    """A pretrained network that maps preprocessed images to feature vectors.

    Subclasses set `feature_dim`, build `preprocess`, and implement `torch_module()`, the
    PyTorch module mapping a (n, 3, s, s) batch to (n, feature_dim) features (used for
    extraction here and for fine-tuning by the deep hashers).
    """

    name: ClassVar[str] = "?"
    feature_dim: int
    preprocess: Preprocess

    def config(self) -> dict:
        """What identifies this backbone's features: name, preprocessing, weights digest."""
        return {
            "name": self.name,
            "preprocess": asdict(self.preprocess),
            "weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
        }

    @property
    def weights_path(self) -> Path:  # pragma: no cover - every backbone overrides
        raise NotImplementedError

    @cached_property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights_path)

    @property
    def cache_key(self) -> str:
        """Names the features this backbone makes: same key, same features."""
        p = self.preprocess
        return f"{self.name}-{p.input_size}px-{self.weights_sha256[:16]}"

    def torch_module(self):  # pragma: no cover - every backbone overrides
        raise NotImplementedError

    def init_module(self):
        """The module training starts from (`torch_module()`, i.e. the pretrained weights, unless
        the backbone is trained from scratch)."""
        return self.torch_module()

    def save_weights(self, module, path: str | os.PathLike) -> Path:
        """Write a trained `module`'s weights where ``type(self)(weights=path)`` loads them."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
        os.replace(tmp, path)
        return path

    @cached_property
    def _module(self):
        import torch

        module = self.torch_module().eval()
        return module.to(memory_format=torch.channels_last)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Features of a preprocessed (n, 3, s, s) float32 batch, as (n, feature_dim) float32."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return self._module(x).float().numpy()


def check_weights_file(path: str | os.PathLike, what: str) -> Path:
    """A weights path that exists, or a FileNotFoundError that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file for {what} not found: {path}. Pass weights=PATH to a local file "
            "(hashsearch never downloads weights at run time)."
        )
    return path
