"""Memory of the encoding pipeline against the collection's size: flat, but for the features it returns.

`extract_features` (ONNX Runtime fp32, the default worker processes) on N images from an empty
feature cache, for growing N: CIFAR-10 (JPEG) images at 128 px, ~1 Mpx JPEGs (CIFAR-10 test
images upscaled to 1152x864, as in encode.py: no real photos are available offline) and ~4 Mpx
ones (upscaled to 2304x1728) at 224 px.
A thread samples the proportional set size (PSS: each shared page split between the processes
sharing it, so the sum is what they use together) of this process and of its worker processes
every 20 ms. The table prints the peaks above this process's PSS before the call, the size of
the features the call returns (N x 1280 float32, which any result of N features must hold), and
the peak less those features: the pipeline's own memory (the bounded queues of file bytes and
batches, the workers and their ONNX Runtime sessions, the lists of records and digests).

    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/encode_memory.py \\
        --out benchmarks/results/encode-memory.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

from _report import Report  # benchmarks/_report.py (this script's folder is on the path)
from encode import cifar_test_records, megapixel_folder

from hashsearch.backbones import create_backbone
from hashsearch.backbones.runtime import OnnxExtractor
from hashsearch.data.protocols import cifar10_root
from hashsearch.data.sources import FolderSource
from hashsearch.pipeline.local import extract_features
from hashsearch.pipeline.workers import default_workers

warnings.filterwarnings("ignore")
MB = 2**20


def pss(pid: int) -> int:
    """The PSS of a process in bytes (0 if it has exited)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The child processes of `pid`, and theirs."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out + [g for c in out for g in children(c)]


class PeakSampler(threading.Thread):
    """Samples the PSS of this process and its descendants every `interval` seconds; keeps the
    sample whose sum is the largest (`main`, `workers`: its two parts)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.main = self.workers = 0

    @property
    def total(self) -> int:
        return self.main + self.workers

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            main = pss(me)
            workers = sum(pss(c) for c in children(me))
            if main + workers > self.total:
                self.main, self.workers = main, workers
            self.stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def measure(label: str, source, records, size: int, models: Path, log) -> tuple[int, int]:
    """One row: encode `records` from an empty cache; returns (N, pipeline bytes)."""
    bb = create_backbone("efficientnet-lite0", input_size=size)
    extractor = OnnxExtractor(bb, cache_dir=models)
    with tempfile.TemporaryDirectory() as cache:  # export the model outside the measurement
        extract_features(source, bb, records[:64], cache_dir=cache, extractor=extractor, progress=False)
    with tempfile.TemporaryDirectory() as cache:
        before = pss(os.getpid())
        t = time.perf_counter()
        with PeakSampler() as peak:
            ex = extract_features(source, bb, records, cache_dir=cache, extractor=extractor, progress=False)
        seconds = time.perf_counter() - t
    n = len(ex.records)
    feats = ex.features.nbytes
    total = peak.total - before
    log(
        f"{label:>22} | {n:>6} | {n / seconds:6.1f} | {before / MB:6.1f} | {peak.main / MB:6.1f} | "
        f"{peak.workers / MB:7.1f} | {total / MB:7.1f} | {feats / MB:8.1f} | {(total - feats) / MB:8.1f}"
    )
    del ex
    return n, total - feats


def slope(points: list[tuple[int, int]]) -> str:
    """The pipeline memory's change between the two largest collections (the bounded queues fill
    in the first chunks: from about 1,500 images on, they are full)."""
    (n0, m0), (n1, m1) = points[-2], points[-1]
    return f"{(m1 - m0) / MB:+.1f} MB from {n0} to {n1} images ({(m1 - m0) / (n1 - n0):.0f} bytes per image)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cifar",
        type=int,
        nargs="+",
        default=[2500, 10000, 40000],
        help="CIFAR-10 collection sizes (train and test images, at most 60000)",
    )
    ap.add_argument("--mp", type=int, nargs="+", default=[500, 2000, 4000], help="~1 Mpx collection sizes")
    ap.add_argument("--big", type=int, nargs="+", default=[300, 1200], help="~4 Mpx collection sizes")
    ap.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    args = ap.parse_args()
    log = Report(
        f"EfficientNet-Lite0, ONNX Runtime fp32, batch 64, {default_workers()} worker processes; "
        "PSS sampled every 20 ms; MB = 2^20 bytes"
    )
    log("")
    log(
        f"{'data':>22} | {'N':>6} | {'im/s':>6} | {'before':>6} | {'main':>6} | {'workers':>7} | "
        f"{'growth':>7} | {'features':>8} | {'pipeline':>8}"
    )
    log(
        "  MB of PSS. before: this process before the call; at the sample where this process and its workers "
        "together peaked: main (this process), workers (together); growth: main + workers - before; features: "
        "the N x 1280 float32 returned; pipeline: growth - features"
    )
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        source = FolderSource(cifar10_root())
        everything = source.records()
        points = []
        for n in args.cifar:
            step = max(1, len(everything) // n)
            points.append(measure("CIFAR-10 JPEG, 128 px", source, everything[::step][:n], 128, models, log))
        growth = {"CIFAR-10": points}
        for name, sizes, (w, h) in (("1 Mpx JPEGs", args.mp, (1152, 864)), ("4 Mpx JPEGs", args.big, (2304, 1728))):
            if not sizes:
                continue
            src, recs = cifar_test_records(max(sizes))
            folder = megapixel_folder(src, recs, Path(tmp) / name.split()[0], (w, h))
            mp_recs = folder.records()
            nbytes = sum(p.stat().st_size for p in (Path(r.key) for r in mp_recs))
            log(f"{'':>22}   ({len(mp_recs)} {w}x{h} JPEGs of {nbytes / len(mp_recs) / 1024:.0f} kB on average)")
            growth[name] = [
                measure(f"{w}x{h} JPEG, 224 px", folder, mp_recs[:: max(1, len(mp_recs) // n)][:n], 224, models, log)
                for n in sizes
            ]
        log("")
        for name, points in growth.items():
            if len(points) > 1:
                log(f"pipeline memory, {name}: {slope(points)}")
        log(f"(the features take {1280 * 4} bytes per image)")
    log.save(args.out, "Encoding memory against the collection's size (printed by benchmarks/encode_memory.py)")


if __name__ == "__main__":
    main()
