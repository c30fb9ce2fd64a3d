"""Ray's fixed start per run: Ray Data's own floor beside a small hashsearch Ray job.

Every `extract_features_ray` run is a new Ray Data job whose actor pool starts anew. This prints,
on a local Ray of 2 CPUs started once (as a running cluster is):
- two plain Ray actors (not Ray Data's): the time until both are ready, and how long importing
  `ray.data`, which every Ray Data actor's process does first, took in them;
- the floor: a `map_batches` over 128 rows on a pool of 2 actors that do nothing, the time until
  its actors are constructed and until its first batch comes back;
- a hashsearch Ray job on 64 CIFAR-10 test images (one batch; ONNX fp32 at 128 px, exported
  beforehand), end to end, with the engine's own time split.
Each is run 3 times after a first, cold run.

    python benchmarks/ray_start.py --out benchmarks/results/ray-start.md
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

from _report import Report  # benchmarks/_report.py (this script's folder is on the path)

warnings.simplefilter("ignore")
logging.getLogger("ray").setLevel(logging.ERROR)


class _Idle:
    """An actor that stamps when it was constructed and does nothing else."""

    def __init__(self) -> None:
        self.born = time.time()

    def __call__(self, batch: dict) -> dict:
        batch["born"] = [self.born] * len(batch["i"])
        return batch


class _Plain:
    """A plain Ray actor (not Ray Data's) that times importing Ray Data, as a Ray Data actor's
    process must before it can run."""

    def __init__(self) -> None:
        t = time.perf_counter()
        import ray.data  # noqa: F401

        self.imported = time.perf_counter() - t

    def ready(self) -> float:
        return self.imported


def plain_run(ray) -> tuple[float, float]:
    """(seconds from creating 2 plain actors until both are ready, the longer of their ray.data imports)."""
    actor = ray.remote(num_cpus=0.5)(_Plain)
    t0 = time.time()
    actors = [actor.remote() for _ in range(2)]
    imported = ray.get([a.ready.remote() for a in actors])
    ready = time.time() - t0
    for a in actors:
        ray.kill(a)
    return ready, max(imported)


def floor_run(ray) -> tuple[float, float, float]:
    """(actors constructed, first batch back, done), seconds from the job's creation."""
    t0 = time.time()
    ds = ray.data.from_items([{"i": i} for i in range(128)], override_num_blocks=2).map_batches(
        _Idle, batch_size=None, num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=2)
    )
    first = born = None
    for batch in ds.iter_batches(batch_size=None):
        first = first or time.time()
        born = min(born or batch["born"][0], batch["born"][0])
    return born - t0, first - t0, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    args = ap.parse_args()
    import ray

    from hashsearch.backbones import create_backbone
    from hashsearch.backbones.runtime import OnnxExtractor
    from hashsearch.data.protocols import cifar10_root
    from hashsearch.data.sources import FolderSource
    from hashsearch.pipeline.ray_engine import extract_features_ray

    log = Report(f"Ray {ray.__version__}; local Ray with 2 CPUs")
    source = FolderSource(cifar10_root() / "test")
    records = source.records()[:64]
    bb = create_backbone("efficientnet-lite0", input_size=128)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            extractor = OnnxExtractor(bb, cache_dir=tmp)
            for i in range(args.repeat + 1):
                ready, imported = plain_run(ray)
                log(
                    f"{'cold ' if i == 0 else ''}2 plain Ray actors (not Ray Data's): ready {ready:.2f}s, "
                    f"of which importing ray.data in each {imported:.2f}s"
                )
            for i in range(args.repeat + 1):
                born, first, done = floor_run(ray)
                log(
                    f"{'cold ' if i == 0 else ''}Ray Data floor (2 idle actors, 128 rows): actors constructed "
                    f"{born:.2f}s, first batch {first:.2f}s, done {done:.2f}s"
                )
            for i in range(args.repeat + 1):
                with tempfile.TemporaryDirectory() as cache:
                    t = time.perf_counter()
                    ex = extract_features_ray(source, bb, records, cache_dir=cache, extractor=extractor, progress=False)
                    total = time.perf_counter() - t
                log(
                    f"{'cold ' if i == 0 else ''}hashsearch Ray job, 64 CIFAR-10 images: {total:.2f}s ("
                    + ", ".join(f"{k} {v:.2f}s" for k, v in ex.timings.items())
                    + ")"
                )
    finally:
        ray.shutdown()
    log.save(args.out, "Ray's fixed start per run (printed by benchmarks/ray_start.py)")


if __name__ == "__main__":
    main()
