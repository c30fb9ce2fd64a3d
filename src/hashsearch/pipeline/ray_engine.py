"""The Ray Data engine: the pipeline's steps (`hashsearch.pipeline.steps`) scheduled on a Ray cluster.

The driver reads each file once, digests it and looks it up in the feature cache, chunk by chunk
as the local engine does (steps 1-3: a rerun, or a run after an interruption, computes nothing
already cached); the missing images become a Ray Dataset of their keys (the actors are not sent
the list of every record, which they would each unpickle at start); `map_batches` on an actor
pool, each actor holding one inference session, reads them again by key and runs steps 1, 2, 4
and 5 (`BatchExtractor`, what the local engine's workers run, so the same pixels and the same
bad-file reasons); the driver writes the features to the cache as they stream back (step 6) and
assembles the result in the source's order (step 7). Entries, features, codes, counts and the
bad-file report equal those of the local engine.

CPU budget. On a small machine an actor pool that claims every CPU leaves none for Ray's own
tasks and the job hangs; actors therefore ask for a fraction of a CPU (`actor_cpus`, default
0.5), and `plan_actors` keeps `spare_cpus` (default 0.5) unclaimed.

Without an address a local Ray is started on this machine (and stopped afterwards); with
``address="ray://head:10001"`` or ``"auto"`` the same code runs on a cluster, whose workers must
be able to read the source's paths (a shared file system) and have hashsearch installed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hashsearch.backbones.base import Backbone
from hashsearch.backbones.runtime import FeatureExtractor
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import ImageRecord, ImageSource
from hashsearch.pipeline.cache import content_digest
from hashsearch.pipeline.steps import BatchExtractor, Chunk, Extracted, Run, read, worker_model


class _Extract:
    """Ray actor: image keys and the digests the driver read -> (digest, ok, reason, features) rows.

    Each actor reads its batch by key (step 1) and runs the local engine's `BatchExtractor` on it
    (steps 4 and 5) with the one inference session it holds (ONNX Runtime on the uint8 crops;
    PyTorch on fallback), one actor per CPU with one inference thread each, as the local
    engine's workers. The pixels never cross the object store (or, on a cluster, the network).
    Each row is named by the digest the driver read; a file that can no longer be read, or whose
    bytes changed since, is a failed row.
    """

    def __init__(self, source: ImageSource, extract: BatchExtractor) -> None:
        self.source, self.extract = source, extract

    def __call__(self, batch: dict) -> dict:
        recs = [ImageRecord(str(key)) for key in batch["key"]]  # every source reads by key
        expected = [str(d) for d in batch["digest"]]
        jobs, lost = [], []
        for (record, data, error), digest in zip(read(self.source, recs), expected):
            if error is None and content_digest(data) != digest:
                error = "the file changed during the run; run again to index it"
            if error is not None:
                lost.append((digest, error))
                continue
            jobs.append((digest, record.key, data))
        digests, feats, failed = self.extract(jobs)
        failed = list(failed) + lost
        n = len(digests) + len(failed)
        full = np.zeros((n, self.extract.feature_dim), np.float32)
        full[: len(digests)] = feats
        return {
            "digest": np.array(list(digests) + [d for d, _ in failed], dtype=object),
            "ok": np.array([True] * len(digests) + [False] * len(failed)),
            "reason": np.array([""] * len(digests) + [r for _, r in failed], dtype=object),
            "features": full,
        }


def plan_actors(total_cpus: float, actors: int | None, actor_cpus: float, spare_cpus: float = 0.5) -> tuple[int, int]:
    """(actors, inference threads per actor) for a cluster of `total_cpus`.

    Actors default to one per CPU, each with one thread (see `_Extract`). Raises a ValueError when
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
    extractor: FeatureExtractor | None = None,
) -> Extracted:
    """`hashsearch.pipeline.local.extract_features` run on Ray Data; same arguments and the same result.

    Parameters
    ----------
    address : str, optional
        A Ray cluster ("auto", "ray://host:10001"); default: start a local Ray here.
    num_cpus : int, optional
        CPUs of the local Ray (default: all); ignored with `address`.
    actors, actor_cpus, spare_cpus
        The actor pool's size (default: one per CPU), the CPUs each actor reserves, and the CPUs
        kept for Ray's own tasks (see the module docstring and `plan_actors`).
    extractor : FeatureExtractor, optional
        A ready extractor (`hashsearch.backbones.make_extractor`); overrides runtime and int8.
    """
    import ray

    run = Run(
        source,
        backbone,
        records,
        cache_dir=cache_dir,
        batch_size=batch_size,
        max_pixels=max_pixels,
        runtime=runtime,
        int8=int8,
        calibration_size=calibration_size,
        extractor=extractor,
    )
    ex = run.extractor
    with run:
        # Steps 1-3, chunk by chunk as the local engine; the bytes are not kept.
        chunks: list[Chunk] = []
        missing: dict[str, ImageRecord] = {}  # each digest missing from the cache -> its first file
        for items in run.chunks():
            chunk = run.look_up(items)
            chunk.jobs = []
            for digest, record in chunk.todo.items():
                missing.setdefault(digest, record)
            chunks.append(chunk)
        t_scan = time.perf_counter() - run.t0

        failed: dict[str, str] = {}
        t1 = time.perf_counter()
        first_arrived = None  # when the first batch of features arrived
        if missing:
            model = None
            if ex.portable:
                # The export check needs a few real images: the first missing ones that decode
                # (read only if the model is not exported yet).
                reads = read(source, list(missing.values()))
                model = worker_model(ex, ((content_digest(b), r.key, b) for r, b, e in reads if e is None), max_pixels)
            started = False
            if not ray.is_initialized():
                ray.init(
                    address=address,
                    num_cpus=None if address else num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
                started = True
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False
                total = float(ray.cluster_resources().get("CPU", 1))
                n_actors, threads = plan_actors(total, actors, actor_cpus, spare_cpus)
                # One block per batch, each block one task (batch_size=None): blocks of n / ceil(n / b)
                # rows fall just short of b, and Ray would otherwise pair them into tasks of 2 b rows,
                # which doubles the wait for the first features and the imbalance at the end.
                ds = ray.data.from_items(
                    [{"key": r.key, "digest": d} for d, r in missing.items()],
                    override_num_blocks=max(1, -(-len(missing) // batch_size)),
                )
                task = BatchExtractor(
                    ex.preprocess,
                    max_pixels,
                    ex.feature_dim,
                    model=model,
                    backbone=None if model is not None else ex.backbone,
                    threads=threads,
                )
                ds = ds.map_batches(
                    _Extract,
                    fn_constructor_args=(source, task),
                    batch_size=None,
                    num_cpus=actor_cpus,
                    compute=ray.data.ActorPoolStrategy(size=n_actors),
                )
                bar = tqdm(total=len(missing), unit="img", desc=f"ray {ex.cache_key}", disable=not progress or None)
                try:
                    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                        if first_arrived is None:
                            first_arrived = time.perf_counter()
                        ok = batch["ok"].astype(bool)
                        digests = [str(d) for d in batch["digest"]]
                        run.store([d for d, k in zip(digests, ok) if k], batch["features"][ok])  # step 6
                        failed.update((d, str(r)) for d, r, k in zip(digests, batch["reason"], ok) if not k)
                        bar.update(len(ok))
                finally:
                    bar.close()
            finally:
                if started:
                    ray.shutdown()
        t_ray = time.perf_counter() - t1

        # Step 7, chunk by chunk, with the features from the cache.
        t2 = time.perf_counter()
        for chunk in chunks:
            chunk.cached = run.cache.get_many(sorted({d for _, d in chunk.good if d not in failed}))
            run.assemble(chunk, failed)
    result = run.result()
    t_first = first_arrived - t1 if first_arrived else t_ray
    result.timings = {
        "scan (driver: read, digest, cache look-up)": t_scan,
        "ray start (the job, its actors, the first batch)": t_first,
        "ray rest (decode + extract)": t_ray - t_first,
        "assemble (driver: from the cache)": time.perf_counter() - t2,
    }
    return result
