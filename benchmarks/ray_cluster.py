"""Feature extraction on a two-node Ray cluster beside the local engine, over the same CIFAR-10 images.

The cluster is the one the tests start (tests/distributed/test_ray_cluster.py's `Cluster`): a head
node and a second node, one CPU each, as separate `ray start` processes on this machine, with a
token of their own. Both engines run the same exported ONNX model (fp32, efficientnet-lite0 at
--size px) over the same --n CIFAR-10 test images, each with an empty feature cache: the local
engine with its default worker processes, then the cluster (`extract_features_ray`, what
`hashsearch index --engine ray --address HOST:PORT` runs), one run each. The rate is images per
second of the whole call, start included (the cluster's job starts its actors anew each run).

    flock /tmp/hashsearch-bench.lock nice -n 5 python benchmarks/ray_cluster.py --out benchmarks/results/ray-cluster.md
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from _report import Report  # benchmarks/_report.py (this script's folder is on the path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests/
warnings.simplefilter("ignore")
logging.getLogger("ray").setLevel(logging.ERROR)


class _Watch:
    """Which nodes (their `ray start` sessions) had an actor extracting, polled while a job runs."""

    def __init__(self, sessions: dict[str, int]) -> None:
        self.sessions, self.seen = sessions, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.distributed.test_ray_cluster import _titles

        while not self._stop.wait(0.5):
            for name, sid in self.sessions.items():
                if any("MapWorker" in t and ".submit" in t for t in _titles(sid)):
                    self.seen.add(name)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="CIFAR-10 test images (the first of each class, in turn)")
    ap.add_argument("--size", type=int, default=128, help="backbone input size in pixels")
    ap.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hsray-", dir="/tmp"))  # short: Ray's socket paths live under it
    # Ray reads its authentication settings when it is imported: the cluster's token (written by
    # Cluster below) is named here first.
    (root / "token").write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"))
    import numpy as np
    import ray

    from hashsearch.backbones import create_backbone
    from hashsearch.backbones.runtime import OnnxExtractor
    from hashsearch.data.protocols import cifar10_root
    from hashsearch.data.sources import FolderSource
    from hashsearch.pipeline.local import extract_features
    from hashsearch.pipeline.ray_engine import extract_features_ray
    from tests.distributed.test_ray_cluster import Cluster

    log = Report(
        f"Ray {ray.__version__}; {args.n} CIFAR-10 test images, efficientnet-lite0 at {args.size} px, ONNX fp32"
    )
    source = FolderSource(cifar10_root() / "test")
    by_class: dict[str, list] = {}
    for r in source.records():
        by_class.setdefault(r.label, []).append(r)
    records = [r for group in zip(*by_class.values()) for r in group][: args.n]
    bb = create_backbone("efficientnet-lite0", input_size=args.size)
    cluster = Cluster(root)
    assert cluster.env["RAY_AUTH_TOKEN_PATH"] == os.environ["RAY_AUTH_TOKEN_PATH"]
    try:
        extractor = OnnxExtractor(bb, cache_dir=root / "onnx")
        # Export (and check) the ONNX model first, on 8 images: neither rate includes it.
        extract_features(source, bb, records[:8], cache_dir=root / "c-warm", extractor=extractor, progress=False)
        t = time.perf_counter()
        local = extract_features(source, bb, records, cache_dir=root / "c-local", extractor=extractor, progress=False)
        t_local = time.perf_counter() - t
        log(
            f"local engine ({local.n_computed} computed, default workers): {t_local:.1f} s, "
            f"{len(records) / t_local:.1f} images/s"
        )

        t = time.perf_counter()
        cluster.start_head()
        cluster.add_node("node2")
        log(f"cluster: head + 1 node, 1 CPU each, started in {time.perf_counter() - t:.1f} s (not in the rate)")
        sessions = {"head": cluster.nodes[0].pid, "node2": cluster.nodes[1].pid}
        with _Watch(sessions) as watch:
            t = time.perf_counter()
            remote = extract_features_ray(
                source,
                bb,
                records,
                cache_dir=root / "c-ray",
                extractor=extractor,
                progress=False,
                address=cluster.address,
            )
            t_ray = time.perf_counter() - t
        ray.shutdown()
        log(
            f"two-node Ray cluster ({remote.n_computed} computed, actors extracted on: "
            f"{', '.join(sorted(watch.seen)) or 'none seen'}): {t_ray:.1f} s, {len(records) / t_ray:.1f} images/s "
            f"({len(records) / t_ray / (len(records) / t_local):.2f}x local)"
        )
        log("  cluster time split: " + ", ".join(f"{k} {v:.1f}s" for k, v in remote.timings.items()))
        same = remote.digests == local.digests and np.array_equal(remote.features, local.features)
        log(f"features identical to the local engine's (same order, same float32 bytes): {same}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    log.save(args.out, "Two-node Ray cluster beside the local engine (printed by benchmarks/ray_cluster.py)")


if __name__ == "__main__":
    main()
