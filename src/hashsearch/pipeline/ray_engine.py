"""The Ray Data engine: the same encoding steps as the local pipeline, spread over a Ray cluster.

Steps: the driver lists the images, reads each once to name it by content and looks it up in the
feature cache (so a rerun, or a run after an interruption, computes nothing already cached); the
missing images become a Ray Dataset of record numbers; `map_batches` tasks read and decode them
(`decode_batch`, the same function as the local pipeline, so the same pixels and the same
bad-file reasons); an actor pool, each actor holding one ONNX Runtime session, encodes them; the
driver writes the features into the cache as they stream back. The result is then assembled from
the cache in the source's order by the local code path, so entries, features, codes and the
bad-file report equal those of a single-process run.

CPU budget. On a small machine an actor pool that claims every CPU leaves none for Ray's read
tasks and the job hangs; actors therefore ask for a fraction of a CPU (`actor_cpus`, default
0.5) and decode tasks too (`decode_cpus`), so that both stages are always schedulable.

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
from hashsearch.data.protocols import cache_dir as default_cache_dir
from hashsearch.data.sources import ImageRecord, ImageSource


class _Decode:
    """Ray task body: record numbers -> (digest, ok, reason, pixels) rows."""

    def __init__(self, source: ImageSource, records: list[ImageRecord], preprocess, max_pixels: int) -> None:
        self.source, self.records, self.preprocess, self.max_pixels = source, records, preprocess, max_pixels

    def __call__(self, batch: dict) -> dict:
        from hashsearch.pipeline.workers import decode_batch

        recs = [self.records[int(i)] for i in batch["i"]]
        jobs, rows = [], []
        for record, data, error in self.source.iter_bytes(recs):
            if error is None and not data:
                error = "empty file"
            if error is not None:  # vanished since the driver read it
                rows.append((record.key, error))
                continue
            jobs.append((content_digest(data), record.key, data))
            rows.append(None)
        # uint8 crops: a quarter of the bytes through the object store; the actor normalises.
        digests, pixels, failed = decode_batch(jobs, self.preprocess, self.max_pixels, normalize=False)
        s = self.preprocess.input_size
        n = len(digests) + len(failed) + sum(r is not None for r in rows)
        out_pixels = np.zeros((n, s, s, 3), np.uint8)
        out_pixels[: len(digests)] = pixels
        reasons = [""] * len(digests) + [r for _, r in failed] + [r for r in rows if r is not None]
        names = list(digests) + [d for d, _ in failed] + ["" for r in rows if r is not None]
        return {
            "digest": np.array(names, dtype=object),
            "ok": np.array([True] * len(digests) + [False] * (n - len(digests))),
            "reason": np.array(reasons, dtype=object),
            "pixels": out_pixels,
        }


class _Encode:
    """Ray actor: holds one inference session (ONNX Runtime, or PyTorch on fallback)."""

    def __init__(self, model: bytes | None, backbone: Backbone | None, preprocess, threads: int) -> None:
        self.preprocess = preprocess
        if model is not None:
            from hashsearch.backbones.runtime import _session

            self.session, self.backbone = _session(model, threads), None
        else:
            import torch

            torch.set_num_threads(threads)
            self.session, self.backbone = None, backbone

    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        pixels = self.preprocess.normalize(batch["pixels"][ok])
        feats = None
        if len(pixels):
            if self.session is not None:
                feats = self.session.run(None, {"images": pixels})[0].astype(np.float32)
            else:
                feats = self.backbone.forward(pixels)
        full = np.zeros((len(ok), feats.shape[1] if feats is not None else 1), np.float32)
        if feats is not None:
            full[ok] = feats
        return {"digest": batch["digest"], "ok": ok, "reason": batch["reason"], "features": full}


def plan_actors(
    total_cpus: float, actors: int | None, actor_cpus: float, decode_cpus: float, decoders: int | None = None
) -> tuple[int, int, int]:
    """(actors, threads per actor, decode actors) for a cluster of `total_cpus`.

    Decode actors default to one per encode actor: decoding costs a fraction of inference
    (0.7 vs 3.1 core-ms per CIFAR image at 128 px, 6 vs 10 for 1 Mpx JPEGs at 224 px, measured
    in benchmarks/results/encode.md), and idle extra decoders only compete for the cores (on
    2 CPUs, three decoders or an autoscaling pool were slower than one when this was chosen).
    Raises a ValueError when the actors would leave no CPU for the decode tasks (the job would
    hang: the read tasks starve).
    """
    for name, value in (("actor_cpus", actor_cpus), ("decode_cpus", decode_cpus)):
        if not 0 < value <= total_cpus:
            raise ValueError(f"{name} must be in (0, {total_cpus:g}] (the cluster's CPUs), got {value!r}")
    if actors is None:
        actors = max(1, int(total_cpus // 2))
    if decoders is None:
        decoders = actors
    for name, value in (("actors", actors), ("decoders", decoders)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if actors * actor_cpus + decode_cpus > total_cpus + 1e-9:
        raise ValueError(
            f"{actors} actors x {actor_cpus:g} CPU + {decode_cpus:g} CPU for a decode task exceeds the "
            f"cluster's {total_cpus:g} CPUs: the read tasks would starve and the job hang. Lower "
            "actors or actor_cpus (fractions such as 0.5 are fine: ONNX Runtime threads are not "
            "bound by Ray's CPU accounting)"
        )
    room = max(1, int((total_cpus - actors * actor_cpus + 1e-9) // decode_cpus))
    decoders = min(decoders, room)
    threads = max(1, int(round(total_cpus / actors)))
    return actors, threads, decoders


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
    decode_cpus: float = 0.5,
    decoders: int | None = None,
    encoder=None,
) -> Extracted:
    """`extract_features` run on Ray Data; same arguments and the same result.

    Parameters
    ----------
    address : str, optional
        A Ray cluster ("auto", "ray://host:10001"); default: start a local Ray here.
    num_cpus : int, optional
        CPUs of the local Ray (default: all); ignored with `address`.
    actors, actor_cpus, decode_cpus, decoders
        The actor pool's size (default: one per 2 CPUs), the CPUs each actor and each decode
        task reserves (see the module docstring), and the decode actors (default: one per
        encode actor, see `plan_actors`).
    encoder : optional
        A ready encoder from `hashsearch.backbones.runtime` (overrides runtime and int8).
    """
    import ray

    from hashsearch.backbones.runtime import OnnxEncoder
    from hashsearch.pipeline.encode import prepare_encoder
    from hashsearch.pipeline.workers import decode_batch

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
    if todo:
        model = None
        if isinstance(encoder, OnnxEncoder):
            # The export check needs a few real images: decode the first missing ones here.
            first = [records[i] for i in list(todo.values())[:8]]
            jobs = [(content_digest(b), r.key, b) for r, b, e in source.iter_bytes(first) if e is None and b]
            _, check, _ = decode_batch(jobs, encoder.preprocess, max_pixels)
            model = encoder.model_bytes(check if len(check) else None)
        started = False
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
            started = True
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            total = float(ray.cluster_resources().get("CPU", 1))
            n_actors, threads, n_decoders = plan_actors(total, actors, actor_cpus, decode_cpus, decoders)
            ds = ray.data.from_items([{"i": i} for i in todo.values()], override_num_blocks=max(1, len(todo) // (batch_size * 4)))
            ds = ds.map_batches(
                _Decode, fn_constructor_args=(source, records, encoder.preprocess, max_pixels),
                batch_size=batch_size, num_cpus=decode_cpus,
                compute=ray.data.ActorPoolStrategy(size=n_decoders),
            )
            ds = ds.map_batches(
                _Encode,
                fn_constructor_args=(model, None if model is not None else backbone, encoder.preprocess, threads),
                batch_size=batch_size, num_cpus=actor_cpus, compute=ray.data.ActorPoolStrategy(size=n_actors),
            )
            cache = FeatureCache(cache_dir or default_cache_dir(), encoder.cache_key, encoder.feature_dim)
            bar = tqdm(total=len(todo), unit="img", desc=f"ray {encoder.cache_key}", disable=not progress or None)
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
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
    out.timings = {"scan (driver: read, digest, cache look-up)": t_scan, "ray (decode + encode)": t_ray,
                   "assemble (driver: from the cache)": time.perf_counter() - t2}
    return out
