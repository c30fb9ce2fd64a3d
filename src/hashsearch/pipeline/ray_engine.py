"""The Ray Data engine: the same encoding steps as the local pipeline, spread over a Ray cluster.

Steps: the driver lists the images, reads each once to name it by content and looks it up in the
feature cache (so a rerun, or a run after an interruption, computes nothing already cached); the
missing images become a Ray Dataset of their keys (the actors are not sent the list of every
record, which they would each unpickle at start); `map_batches` on an actor pool, each actor
holding one ONNX Runtime session, reads them and decodes and encodes them (`BatchEncoder`, what
the local pipeline's workers run, so the same pixels and the same bad-file reasons); the driver
writes the features into the cache as they stream back. The result is then assembled from the
cache in the source's order by the local code path, so entries, features, codes and the bad-file
report equal those of a single-process run.

CPU budget. On a small machine an actor pool that claims every CPU leaves none for Ray's own
tasks and the job hangs; actors therefore ask for a fraction of a CPU (`actor_cpus`, default
0.5), and `plan_actors` keeps `spare_cpus` (default 0.5) unclaimed.

Without an address a local Ray is started on this machine (and stopped afterwards); with
``address="ray://head:10001"`` or ``"auto"`` the same code runs on a cluster, whose workers must
be able to read the source's paths (a shared file system) and have hashsearch installed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from hashsearch.backbones.base import Backbone
from hashsearch.backbones.cache import FeatureCache, content_digest
from hashsearch.backbones.extract import Extracted, extract_features
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.paths import cache_dir as default_cache_dir
from hashsearch.data.sources import ImageRecord, ImageSource


class _Encode:
    """Ray actor: image keys -> (digest, ok, reason, features) rows.

    Each actor reads its batch and runs the local pipeline's `BatchEncoder` on it: decoding
    (`decode_batch`) and encoding with the one inference session the actor holds (ONNX Runtime
    on the uint8 crops, see `pixel_input_model`; PyTorch on fallback), one actor per CPU with one
    inference thread each, as the local pipeline's workers. The pixels never cross the object
    store (or, on a cluster, the network). (Separate decode and encode actor pools, the earlier
    design, were slower on 2 CPUs; the committed ratio to the local pipeline is in
    benchmarks/results/encode.md.)
    """

    def __init__(self, source: ImageSource, encode) -> None:
        self.source, self.encode = source, encode

    def __call__(self, batch: dict) -> dict:
        recs = [ImageRecord(str(key)) for key in batch["key"]]  # every source reads by key
        jobs, vanished = [], []
        for record, data, error in self.source.iter_bytes(recs):
            if error is None and not data:
                error = "empty file"
            if error is not None:  # vanished since the driver read it
                vanished.append(error)
                continue
            jobs.append((content_digest(data), record.key, data))
        digests, feats, failed = self.encode(jobs)
        n = len(digests) + len(failed) + len(vanished)
        full = np.zeros((n, feats.shape[1]), np.float32)
        full[: len(digests)] = feats
        return {
            "digest": np.array(list(digests) + [d for d, _ in failed] + [""] * len(vanished), dtype=object),
            "ok": np.array([True] * len(digests) + [False] * (n - len(digests))),
            "reason": np.array([""] * len(digests) + [r for _, r in failed] + vanished, dtype=object),
            "features": full,
        }


def plan_actors(total_cpus: float, actors: int | None, actor_cpus: float, spare_cpus: float = 0.5) -> tuple[int, int]:
    """(actors, inference threads per actor) for a cluster of `total_cpus`.

    Actors default to one per CPU, each with one thread (see `_Encode`). Raises a ValueError when
    the actors would claim more than `total_cpus - spare_cpus`: Ray's own tasks need CPUs to be
    scheduled (on 2 CPUs an actor pool that claimed both left Ray's read tasks starved and the
    job hung), so actors ask for a fraction of a CPU (`actor_cpus`, default 0.5): ONNX Runtime's
    threads are not bound by Ray's CPU accounting.
    """
    for name, value in (("actor_cpus", actor_cpus), ("spare_cpus", spare_cpus)):
        if not 0 < value <= total_cpus:
            raise ValueError(f"{name} must be in (0, {total_cpus:g}] (the cluster's CPUs), got {value!r}")
    if actors is None:
        actors = max(1, min(int(total_cpus), int((total_cpus - spare_cpus + 1e-9) // actor_cpus)))
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    if actors * actor_cpus + spare_cpus > total_cpus + 1e-9:
        raise ValueError(
            f"{actors} actors x {actor_cpus:g} CPU + {spare_cpus:g} CPU for Ray's own tasks exceeds the "
            f"cluster's {total_cpus:g} CPUs: the read tasks would starve and the job hang. Lower "
            "actors or actor_cpus (fractions such as 0.5 are fine: ONNX Runtime threads are not "
            "bound by Ray's CPU accounting)"
        )
    return actors, max(1, int(round(total_cpus / actors)))


def extract_features_ray(
    source: ImageSource,
    backbone: Backbone,
    records: Sequence[ImageRecord] | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    runtime: str = "onnx",
    int8: bool = False,
    calibration_size: int = 256,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    actor_cpus: float = 0.5,
    spare_cpus: float = 0.5,
    encoder=None,
) -> Extracted:
    """`extract_features` run on Ray Data; same arguments and the same result.

    Parameters
    ----------
    address : str, optional
        A Ray cluster ("auto", "ray://host:10001"); default: start a local Ray here.
    num_cpus : int, optional
        CPUs of the local Ray (default: all); ignored with `address`.
    actors, actor_cpus, spare_cpus
        The actor pool's size (default: one per CPU), the CPUs each actor reserves, and the CPUs
        kept for Ray's own tasks (see the module docstring and `plan_actors`).
    encoder : optional
        A ready encoder from `hashsearch.backbones.runtime` (overrides runtime and int8).
    """
    import ray

    from hashsearch.backbones.runtime import OnnxEncoder
    from hashsearch.pipeline.encode import prepare_encoder
    from hashsearch.pipeline.workers import BatchEncoder, pixel_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    records = list(source.records() if records is None else records)
    encoder = prepare_encoder(backbone, records, source, runtime=runtime, int8=int8, calibration_size=calibration_size,
                              cache_dir=cache_dir, max_pixels=max_pixels, encoder=encoder)

    # 1. What is missing from the cache (the driver reads each file once, to digest it).
    cache = FeatureCache(cache_dir or default_cache_dir(), encoder.cache_key, encoder.feature_dim)
    todo: dict[str, int] = {}  # missing digest -> its first record
    seen: set[str] = set()
    fresh: dict[str, int] = {}  # digests not yet looked up
    try:
        index = {r.key: i for i, r in enumerate(records)}

        def look_up() -> None:
            found = cache.get_many(list(fresh))
            todo.update((d, i) for d, i in fresh.items() if d not in found)
            fresh.clear()

        for record, data, error in source.iter_bytes(records):
            if error is None and data:
                d = content_digest(data)
                if d not in seen:
                    seen.add(d)
                    fresh[d] = index[record.key]
                    if len(fresh) >= 4096:
                        look_up()
        look_up()
    finally:
        cache.close()

    t_scan = time.perf_counter() - t0
    failures: dict[str, str] = {}
    n_computed = 0
    t1 = time.perf_counter()
    first_arrived = None  # when the first batch of features arrived
    if todo:
        model = None
        if isinstance(encoder, OnnxEncoder):
            # The export check needs a few real images: the first missing ones that decode
            # (read only if the model is not exported yet).
            reads = source.iter_bytes([records[i] for i in todo.values()])
            model = pixel_model(encoder, ((content_digest(b), r.key, b) for r, b, e in reads if e is None and b),
                                max_pixels)
        started = False
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
            started = True
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            total = float(ray.cluster_resources().get("CPU", 1))
            n_actors, threads = plan_actors(total, actors, actor_cpus, spare_cpus)
            # One block per batch, each block one task (batch_size=None): blocks of n / ceil(n / b)
            # rows fall just short of b, and Ray would otherwise pair them into tasks of 2 b rows,
            # which doubles the wait for the first features and the imbalance at the end.
            ds = ray.data.from_items([{"key": records[i].key} for i in todo.values()],
                                     override_num_blocks=max(1, -(-len(todo) // batch_size)))
            encode = BatchEncoder(encoder.preprocess, max_pixels, encoder.feature_dim, model=model,
                                  backbone=None if model is not None else backbone, threads=threads)
            ds = ds.map_batches(
                _Encode,
                fn_constructor_args=(source, encode),
                batch_size=None, num_cpus=actor_cpus, compute=ray.data.ActorPoolStrategy(size=n_actors),
            )
            cache = FeatureCache(cache_dir or default_cache_dir(), encoder.cache_key, encoder.feature_dim)
            bar = tqdm(total=len(todo), unit="img", desc=f"ray {encoder.cache_key}", disable=not progress or None)
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    if first_arrived is None:
                        first_arrived = time.perf_counter()
                    ok = batch["ok"].astype(bool)
                    digests = [str(d) for d in batch["digest"]]
                    good = [d for d, k in zip(digests, ok) if k]
                    if good:
                        cache.put_many(good, batch["features"][ok])
                        n_computed += len(good)
                    failures.update((d, str(r)) for d, r, k in zip(digests, batch["reason"], ok) if not k and d)
                    bar.update(len(ok))
            finally:
                bar.close()
                cache.close()
        finally:
            if started:
                ray.shutdown()

    t_ray = time.perf_counter() - t1
    t2 = time.perf_counter()
    # 2. Assemble from the cache in the source's order (nothing left to compute but failures,
    #    which are passed in rather than decoded again), with the same report as a local run.
    out = extract_features(source, backbone, records, cache_dir=cache_dir, batch_size=batch_size,
                           max_pixels=max_pixels, progress=False, workers=0, encoder=encoder,
                           _known_failures=failures)
    out.n_cached -= n_computed
    out.n_computed = n_computed
    out.seconds = time.perf_counter() - t0
    t_first = first_arrived - t1 if first_arrived else t_ray
    out.timings = {"scan (driver: read, digest, cache look-up)": t_scan,
                   "ray start (the job, its actors, the first batch)": t_first,
                   "ray rest (decode + encode)": t_ray - t_first,
                   "assemble (driver: from the cache)": time.perf_counter() - t2}
    return out
