"""Encoding helpers shared by the local and Ray engines: the encoder, int8 calibration on the user's images."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hashsearch.backbones.cache import content_digest
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import ImageRecord, ImageSource


def calibration_records(records: Sequence[ImageRecord], n: int) -> list[ImageRecord]:
    """`n` records spread evenly over `records` (all of them if fewer), in a fixed order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"calibration_size must be a positive integer (a few hundred is typical), got {n!r}")
    if len(records) <= n:
        return list(records)
    picks = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in sorted(set(picks.tolist()))]


def calibrate(encoder, source: ImageSource, records: Sequence[ImageRecord], n: int = 256,
              *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Quantize `encoder` (an ONNX encoder) to int8, calibrated on `n` images of `records`.

    Bad files among them are left out (they are reported by the encoding run itself). Returns
    the encoder's new cache key.
    """
    from hashsearch.backbones.runtime import OnnxEncoder
    from hashsearch.pipeline.workers import decode_batch

    if not isinstance(encoder, OnnxEncoder):
        raise ValueError(
            f"int8 quantization needs the ONNX runtime, but encoding runs on {encoder.runtime!r} "
            "(runtime='torch' was asked for, or onnxruntime cannot load): use runtime='onnx' or drop int8"
        )
    picked = calibration_records(list(records), n)
    jobs = [(content_digest(data), r.key, data) for r, data, err in source.iter_bytes(picked) if err is None and data]
    digests, pixels, _ = decode_batch(jobs, encoder.preprocess, max_pixels)
    if not digests:
        raise ValueError(f"int8 calibration found no readable image among {len(picked)} picked from the source")
    from hashsearch.backbones.runtime import calibration_digest

    encoder.quantize(pixels, calibration_digest(digests))
    return encoder.cache_key


def prepare_encoder(backbone, records: Sequence[ImageRecord], source: ImageSource, *, runtime: str = "onnx",
                    int8: bool = False, calibration_size: int = 256, cache_dir=None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, encoder=None):
    """The encoder an engine runs: `encoder` if given, else one for `runtime`; quantized when `int8`."""
    from hashsearch.backbones.runtime import make_encoder

    if encoder is None:
        encoder = make_encoder(backbone, runtime, cache_dir=cache_dir)
    if int8 and not encoder.int8:
        calibrate(encoder, source, records, calibration_size, max_pixels=max_pixels)
    return encoder
