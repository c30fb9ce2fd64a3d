"""What a worker's decoding costs beside its inference, step by step, in core-milliseconds per image.

On a machine where decoding and inference share the cores, a pipeline cannot pass
inference / (inference + decoding) of its inference-only ceiling (see `shared_bound` in
benchmarks/encode.py). This prints, in one process on one core (best of 7 runs each):
- the two steps of `decode_batch`: `decode_image` (header checks, JPEG decode at draft mode's
  reduced scale for large JPEGs, EXIF orientation, RGB; libjpeg-turbo called directly for common
  JPEGs) beside Pillow's path for the same files (`_decode_with_pillow`, with the check that both
  give the same pixels), and `Preprocess.crop` (the bicubic resize of the square the centre crop
  keeps);
- one-thread ONNX Runtime fp32 inference on the crops, 8 images per call (the workers' layout);
- the bound those costs put on any pipeline that shares the cores, as a share of the ceiling,
  with `decode_image` and with Pillow's path in its place.

Data: CIFAR-10 (JPEG) test images at 128 px, and CIFAR-10 test images upscaled to 1152x864 JPEGs
at 224 px (as in benchmarks/encode.py).

    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/decode_cost.py \
        --out benchmarks/results/decode-cost.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _report import Report  # benchmarks/_report.py (this script's folder is on the path)
from encode import best_rate, cifar_test_records, megapixel_folder

from hashsearch.backbones import create_backbone
from hashsearch.backbones.runtime import OnnxExtractor
from hashsearch.data.decode import _decode_jpeg_direct, _decode_with_pillow, decode_image
from hashsearch.pipeline.steps import BatchExtractor, decode_batch


def ms_per_item(fn, items) -> float:
    """Milliseconds per item of `fn(items)`, the best of 7 runs after a warm-up (`best_rate`)."""
    return 1e3 / best_rate(lambda: fn(items), len(items), repeat=7)


def bound(infer_ms: float, decode_ms: float) -> float:
    """The share of the inference-only ceiling a pipeline sharing the cores cannot pass."""
    return infer_ms / (infer_ms + decode_ms)


def costs(name: str, source, records, size: int, models: Path, log) -> None:
    bb = create_backbone("efficientnet-lite0", input_size=size)
    pre = bb.preprocess
    datas = [(r.key, d) for r, d, e in source.iter_bytes(records) if e is None]
    draft = (size, size)
    images = [decode_image(d, k, draft=draft) for k, d in datas]
    crops = np.stack([pre.crop(im) for im in images])
    jobs = [(str(i), k, d) for i, (k, d) in enumerate(datas)]

    decode = ms_per_item(lambda xs: [decode_image(d, k, draft=draft) for k, d in xs], datas)
    pillow = ms_per_item(lambda xs: [_decode_with_pillow(d, k, 10**9, draft) for k, d in xs], datas)
    direct = sum(_decode_jpeg_direct(d, 10**9, draft) is not None for _, d in datas)
    same = all(
        np.array_equal(np.asarray(a), np.asarray(_decode_with_pillow(d, k, 10**9, draft)))
        for a, (k, d) in zip(images, datas)
    )
    crop = ms_per_item(lambda xs: [pre.crop(im) for im in xs], images)
    whole = ms_per_item(lambda xs: decode_batch(xs, pre, 10**9, normalize=False), jobs)
    enc = OnnxExtractor(bb, cache_dir=models)
    enc.extract(crops[:4])  # exports (and checks) the model once
    task = BatchExtractor(pre, 10**9, enc.feature_dim, model=enc.pixel_model_bytes(), threads=1)
    infer = ms_per_item(task.extract, crops)
    log(f"{name}: {len(datas)} images, one process, one core, ms per image")
    log(
        f"  decode_image {decode:6.3f} ({direct} of {len(datas)} by libjpeg-turbo directly; Pillow's path "
        f"{pillow:6.3f}, pixels {'identical' if same else 'DIFFERENT'}) | crop (resize + centre crop) {crop:6.3f} | "
        f"decode_batch (both, stacked) {whole:6.3f} | ONNX fp32 inference, 1 thread, 8 per call {infer:6.3f}"
    )
    with_pillow = whole - decode + pillow
    log(
        f"  decoding = {whole / infer:.0%} of inference: a pipeline sharing the cores stays below "
        f"{bound(infer, whole):.0%} of the inference-only ceiling ({bound(infer, with_pillow):.0%} with "
        f"Pillow's path for every JPEG, decoding {with_pillow / infer:.0%} of inference)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar-images", type=int, default=2000, help="CIFAR-10 test images at 128 px")
    ap.add_argument("--mp-images", type=int, default=200, help="~1 Mpx JPEGs (upscaled CIFAR) at 224 px")
    ap.add_argument("--models", type=Path, default=None, help="ONNX export folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    args = ap.parse_args()
    log = Report("EfficientNet-Lite0")
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or Path(tmp) / "models"
        src, recs = cifar_test_records(args.cifar_images)
        costs("CIFAR-10 test @128px", src, recs, 128, models, log)
        _, mp_recs = cifar_test_records(args.mp_images)
        mp = megapixel_folder(src, mp_recs, Path(tmp) / "mp")
        costs("1152x864 JPEG @224px", mp, mp.records(), 224, models, log)
    log.save(args.out, "Decoding against inference, per image (printed by benchmarks/decode_cost.py)")


if __name__ == "__main__":
    main()
