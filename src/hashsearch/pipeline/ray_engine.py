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

Without an address a local Ray is started on this machine (and stopped afterwards); with the
address `ray start --head` printed (``"HOST:6379"``), ``"auto"`` or ``"ray://HOST:10001"`` the
same code runs on a cluster. What a cluster needs:

- every node runs `ray start` from a Python that has hashsearch (the same version) and its
  dependencies installed: the actors import hashsearch there;
- every node reads the source's paths as the driver does (a shared file system). A relative path
  is read from the driver's working folder: the actors work in it (`_Extract`), not in the folder
  `ray start` was run from;
- the feature cache is only the driver's: the driver looks it up and writes the features as they
  arrive, so it need not be shared, and a rerun after a failure computes only what is missing;
- a cluster with token authentication (Ray's default where ``~/.ray/auth_token`` exists) needs
  the same token in the driver's environment (``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH``).

A node lost during a job: Ray retries its tasks on the nodes left (the job finishes, with the same
features); a job Ray cannot finish, or a cluster that cannot be reached, raises `RayClusterError`
(one line, saying how many features are safe in the cache).
"""

from __future__ import annotations

import os
import socket
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

#: Seconds to wait for a cluster's address ("HOST:PORT") to accept a connection before giving up
#: (Ray itself retries an address that refuses for minutes).
CONNECT_TIMEOUT_S = 10.0


class RayClusterError(ConnectionError):
    """The Ray cluster cannot be reached, or it could not finish a job (one line, for the user)."""


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of `error`'s message (Ray's carry tracebacks), at most `limit` characters."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise `RayClusterError` at once when `address` ("HOST:PORT", a head node's GCS) refuses
    connections; "auto" and "ray://..." addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayClusterError(
            f"--address {address!r} is not a Ray cluster address: give HOST:PORT (the address "
            "`ray start --head` printed, e.g. 127.0.0.1:6379), auto, or ray://HOST:10001"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start its head node with "
            f"`ray start --head --port {port}` there, or give the address it printed"
        ) from None


def _connect(address: str | None, num_cpus: int | None) -> None:
    """`ray.init` for a local Ray (no address) or a cluster, its failures as `RayClusterError`."""
    import ray

    try:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    except (ray.exceptions.RayError, ConnectionError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = (
            " (a cluster with token authentication needs its token here too: RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
            if address
            else ""
        )
        raise RayClusterError(f"cannot connect to {where}: {_first_line(e)}{hint}") from None


class _Extract:
    """Ray actor: image keys and the digests the driver read -> (digest, ok, reason, features) rows.

    Each actor reads its batch by key (step 1) and runs the local engine's `BatchExtractor` on it
    (steps 4 and 5) with the one inference session it holds (ONNX Runtime on the uint8 crops;
    PyTorch on fallback), one actor per CPU with one inference thread each, as the local
    engine's workers. The pixels never cross the object store (or, on a cluster, the network).
    Each row is named by the digest the driver read; a file that can no longer be read, or whose
    bytes changed since, is a failed row. `cwd`: the driver's working folder, where relative keys
    are read.
    """

    def __init__(self, source: ImageSource, extract: BatchExtractor, cwd: str | None = None) -> None:
        # A relative key or archive path means the driver's working folder, wherever `ray start`
        # was run on this node (a worker of a cluster starts in its node's folder, not the driver's).
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
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
        A Ray cluster: "HOST:PORT" (what `ray start --head` printed), "auto", or
        "ray://HOST:10001"; default: start a local Ray here. See the module docstring for what the
        cluster's nodes need.
    num_cpus : int, optional
        CPUs of the local Ray (default: all); ignored with `address`.
    actors, actor_cpus, spare_cpus
        The actor pool's size (default: one per CPU), the CPUs each actor reserves, and the CPUs
        kept for Ray's own tasks (see the module docstring and `plan_actors`).
    extractor : FeatureExtractor, optional
        A ready extractor (`hashsearch.backbones.make_extractor`); overrides runtime and int8.

    Raises
    ------
    RayClusterError
        The cluster cannot be reached, or a job Ray could not finish (a lost node whose tasks
        could not be retried); the features computed so far are in the cache, and a rerun
        computes only the others.
    ValueError
        As `plan_actors`, and as the local engine.
    """
    import ray

    if address and not ray.is_initialized():
        check_address(address)  # before the scan, which may take long
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
                _connect(address, num_cpus)
                started = True
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False
                ctx.print_on_execution_start = False  # a line naming Ray's log folder, per job
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
                    fn_constructor_args=(source, task, os.getcwd()),
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
                except ray.exceptions.RayError as e:
                    if isinstance(e, ray.data.exceptions.UserCodeException):
                        raise  # a bug in the actors' code, not the cluster's failure
                    done = run.out.n_computed
                    raise RayClusterError(
                        f"the Ray job stopped: {_first_line(e)}; the {done} features computed are in the "
                        f"feature cache ({run.cache.path.parent}): run the command again and only the "
                        f"{len(missing) - done - len(failed)} missing ones are computed"
                    ) from None
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
