"""The state behind the HTTP service: one open `Collection`, a readers-writer lock, limits, thumbnails, jobs.

Every route goes through `ServiceState`, which calls the library (`Collection`, `extract_queries`,
`decode_image`) and owns the concurrency rules:

* searches hold the lock shared, mutations (add, remove, and the atomic save that follows) hold it
  exclusive, so a search sees the collection either before or after a mutation, never half-way;
* the expensive part of an add (decoding and the backbone) runs outside the lock;
* decoding and extraction run only in `Limits.decode_slots` threads of their own (`decoding`): what
  an image costs in memory is paid by that many at a time, whatever the number of clients, and only
  those threads' malloc arenas ever hold decoded pixels (in the web server's thread pool, freed
  pixels stayed in each of its 40 threads' arenas: memory grew with the threads, not the load);
  the request guard (`hashsearch.service.guard`) refuses uploads beyond a short queue;
* a save that fails leaves the collection in memory as it is on disk (`Collection.save` resets
  it), and the client gets a clean 503; nothing the service wrote for that change stays behind;
* another process may change the collection while it is served (`hashsearch add`, `remove`,
  `relocate`, `index --overwrite`): every time a request takes the lock, `refresh` compares the
  folder's live generation (its CURRENT file: one small read) with the one served, and
  when they differ opens the new one and swaps it in under the write lock, between requests; a
  request that holds the old one meanwhile reads it to its end, since a save leaves a generation
  that an open collection holds on disk (`hashsearch.collection`, "Several processes").

Clients see ids, labels and keys relative to the collection's roots (`entries()["key"]`), never a
path of the server's file system.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashsearch.collection import Collection, CollectionError
from hashsearch.data.decode import DecodeError, check_image_bytes, decode_image
from hashsearch.pipeline.build import extract_queries
from hashsearch.pipeline.cache import content_digest
from hashsearch.service.limits import MAX_FILES, MAX_ID, MAX_K, Limits  # noqa: F401 (re-exported)

THUMB_SIZE = 128
#: The most records one `GET /entries` page holds.
MAX_LIST = 1000

log = logging.getLogger("hashsearch.service")


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def read(self):
        return _Held(self, False)

    def write(self):
        return _Held(self, True)

    def _acquire(self, write: bool) -> None:
        with self._cond:
            if write:
                self._waiting += 1
                while self._writer or self._readers:
                    self._cond.wait()
                self._waiting -= 1
                self._writer = True
            else:
                while self._writer or self._waiting:
                    self._cond.wait()
                self._readers += 1

    def _release(self, write: bool) -> None:
        with self._cond:
            if write:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


class _FollowingLock:
    """The service's lock: `RWLock`'s read and write, each after `refresh` (the collection follows
    saves made by other processes; see the module docstring)."""

    def __init__(self, lock: RWLock, refresh) -> None:
        self._lock, self._refresh = lock, refresh

    def read(self):
        self._refresh()
        return self._lock.read()

    def write(self):
        self._refresh()
        return self._lock.write()


class _Held:
    def __init__(self, lock: RWLock, write: bool) -> None:
        self.lock, self.write = lock, write

    def __enter__(self):
        self.lock._acquire(self.write)
        return self

    def __exit__(self, *exc):
        self.lock._release(self.write)


def _extraction(coll: Collection) -> tuple:
    """What decides a collection's query features: its backbone, its trained model, its int8 model."""
    int8 = None if coll.int8_model is None else coll.manifest.get("files", {}).get(coll.int8_model.name)
    return coll.backbone.cache_key, coll.model_id, int8


class BadRequest(ValueError):
    """An error answered to the client: `status`, a message that says what to do, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class _NewImage:
    """An upload decoded and its features extracted, waiting to be added."""

    data: bytes
    name: str
    label: str | None
    digest: str
    feature: np.ndarray
    dest: Path


@dataclass
class Job:
    """A long add running in the background; `GET /jobs/{id}` reports it."""

    id: str
    total: int
    done: int = 0
    state: str = "running"  # running | done | failed
    ids: list[int] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    message: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "ids": self.ids,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "message": self.message,
        }


class ServiceState:
    """One collection served over HTTP: search, records, images, thumbnails, adds and removes.

    Parameters
    ----------
    collection_path : path
        The collection folder (`*.hsx`).
    api_key : str, optional
        The key of the mutating routes (None: they are disabled).
    cache_dir : path, optional
        Thumbnails (default: `<collection>.cache` beside the collection). Uploaded originals
        are kept in the collection folder (`Collection.uploads_dir`).
    limits : Limits, optional
        Sizes, pixels, concurrency and jobs (default `Limits()`).
    eval_json : path, optional
        A benchmark JSON shown by the page's evaluation view.

    Raises
    ------
    CollectionError
        If the collection cannot be opened.
    """

    def __init__(
        self,
        collection_path: str | os.PathLike,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        limits: Limits | None = None,
        eval_json: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(collection_path).absolute()  # saves go here whatever the working directory becomes
        self.coll = Collection.open(self.path)
        self.api_key = api_key or None
        base = Path(cache_dir) if cache_dir else self.path.parent / (self.path.name + ".cache")
        self.thumb_dir = base / "thumbs"
        self.limits = limits or Limits()
        self.eval_json = Path(eval_json) if eval_json else None
        self._rw = RWLock()
        self.lock = _FollowingLock(self._rw, self.refresh)
        self._refresh_lock = threading.Lock()
        self._unreadable: str | None = None  # a live generation that failed to open (not retried)
        self.jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self._thumb_lock = threading.Lock()
        self._extractor = None
        self._extractor_lock = threading.Lock()
        self._decoder = ThreadPoolExecutor(self.limits.decode_slots, thread_name_prefix="hashsearch-decode")
        self._admitted = 0
        self._admit_lock = threading.Lock()
        # Values computed from the collection's contents (its sorted ids, its whitened features),
        # kept until the next change: `generation` counts the changes (add, remove).
        self.generation = 0
        self._derived: dict[str, tuple[int, object]] = {}
        self._derived_locks: dict[str, threading.Lock] = {}

    # -- concurrency ---------------------------------------------------------------------
    def admit_upload(self) -> bool:
        """Take a place for an upload request (decoding or queued); False when all are taken."""
        with self._admit_lock:
            if self._admitted >= self.limits.max_pending_uploads:
                return False
            self._admitted += 1
            return True

    def release_upload(self) -> None:
        with self._admit_lock:
            self._admitted -= 1

    def decoding(self, fn, *args):
        """`fn(*args)` (decoding, extraction) run in one of the `decode_slots` decoding threads; waits
        for a free one, then for the result (exceptions are raised here). `fn` must not call `decoding`."""
        return self._decoder.submit(fn, *args).result()

    def features(self, images: list) -> np.ndarray:
        """Backbone features of decoded images, by the collection's extractor (`Collection.extractor`:
        ONNX Runtime, exported on first use and then read from the cache on disk, with the
        collection's int8 model if it has one; PyTorch if onnxruntime cannot load)."""
        if self._extractor is None:
            with self._extractor_lock:  # the first call exports and opens the session, once
                if self._extractor is None:
                    extractor = self.coll.extractor()
                    feats = extract_queries(self.coll.backbone, images, extractor)
                    self._extractor = extractor
                    return feats
        return extract_queries(self.coll.backbone, images, self._extractor)

    def warm(self) -> float:
        """Load the extractor and search once with a blank image, before the first client comes.

        The first search would otherwise pay for the model's load (ONNX session) and the search
        kernels' first call (numba loading its compiled code), about 1.3 s; `create_app`'s lifespan
        calls this before the server reports itself started. A failure is logged, not raised: the
        first real search then reports it as it would have. Returns the seconds it took.
        """
        from PIL import Image

        t = time.perf_counter()
        try:
            side = self.coll.backbone.preprocess.input_size
            blank = Image.new("RGB", (side, side), (128, 128, 128))
            feats = self.decoding(lambda: self.features([blank]))
            with self.lock.read():
                if len(self.coll):
                    self.coll.search_records(feats, 1)
                    self.coll.search_records(feats, 1, radius=0)
        except Exception as e:  # the server still starts; the first search shows the problem to its client
            log.warning("warming the extractor and search failed (%s: %s)", type(e).__name__, e)
        return time.perf_counter() - t

    def derived(self, name: str, compute):
        """`compute()` of the collection as it is now, computed once per `generation` and then reused.

        For values that depend only on the collection's contents and cost more than a request
        should pay each time (`ids`, the whitened features of `GET /duplicates`). Call it holding
        the read lock: changes hold the write lock and bump `generation`, so a value is never
        computed from one state and kept for another. Two requests needing the same value while it
        is computed wait for the one computation.
        """
        lock = self._derived_locks.setdefault(name, threading.Lock())
        with lock:
            generation, value = self._derived.get(name, (-1, None))
            if generation != self.generation:
                value = compute()
                self._derived[name] = (self.generation, value)
            return value

    def ids(self) -> np.ndarray:
        """The collection's ids, sorted (int64, (n,)); call it holding the read lock."""
        return self.derived("ids", lambda: np.sort(np.asarray(self.coll.index.ids, np.int64)))

    def refresh(self) -> bool:
        """Follow a save made by another process: when the folder's live generation is not the one
        served, open it and swap it in under the write lock (True); else, or when it cannot be
        opened (logged, and the one served kept), False. The generation let go of is deleted
        unless another reader holds it (`Collection.remove_old_generations`).

        Called by every `lock.read()` and `lock.write()`, before the lock is taken; the reopened
        collection is not checksummed again (its files were checksummed by the save that wrote
        them, or are the ones served until now). The extractor is kept unless the backbone, the
        model or the int8 model changed (an `index --overwrite` with other settings).
        """
        live = Collection.live_generation(self.path)
        if live is None or live == self.coll.generation or live == self._unreadable:
            return False
        with self._refresh_lock:  # one reopening; the others wait for it, then see it done
            live = Collection.live_generation(self.path)
            if live is None or live == self.coll.generation or live == self._unreadable:
                return False
            try:
                fresh = Collection.open(self.path, verify=False)
            except (CollectionError, ConnectionError) as e:
                log.warning(
                    "%s: another process saved %s, which cannot be opened; still serving %s (%s)",
                    self.path,
                    live,
                    self.coll.generation,
                    e,
                )
                self._unreadable = live
                return False
            with self._rw.write():
                old, self.coll = self.coll, fresh
                if _extraction(old) != _extraction(fresh):
                    self._extractor = None
                self._changed()
            old.close()
            try:  # the generation let go of, unless another reader holds it
                Collection.remove_old_generations(self.path)
            except OSError as e:  # a read-only folder: the next save removes it
                log.debug("%s: old generations not removed (%s)", self.path, e)
            log.info(
                "%s: reopened at %s (saved by another process), %d entries",
                self.path.name,
                fresh.generation,
                len(fresh),
            )
            return True

    def _changed(self) -> None:
        """Called holding the write lock before the collection changes: what `derived` kept is stale."""
        self.generation += 1

    # -- input checks --------------------------------------------------------------------
    def check_upload(self, data: bytes, name: str, content_type: str | None) -> None:
        """Size, declared content type and magic bytes of one upload (no decoding)."""
        if len(data) > self.limits.max_upload_bytes:
            raise BadRequest(
                413,
                f"{name}: upload is over the per-file limit of {self.limits.max_upload_bytes:,} "
                "bytes (max_upload_bytes); send a smaller file",
            )
        if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
            raise BadRequest(
                415, f"{name}: content type {content_type!r} is not an image; send image/jpeg, image/png, ..."
            )
        try:
            check_image_bytes(data, name)
        except DecodeError as e:
            raise BadRequest(415, str(e)) from e

    def decode(self, data: bytes, name: str, *, query: bool = False, draft: int | None = None):
        """Decode an upload or a stored image, mapping every decoder failure to a 4xx.

        `query`: apply the query pixel limit (`Limits.max_query_pixels`) instead of `max_pixels`.
        `draft`: let a JPEG decode at reduced scale, keeping both sides at least this many pixels
        (default: the backbone's input size, as the indexer decodes).
        """
        limit = self.limits.max_query_pixels if query else self.limits.max_pixels
        try:
            if draft is None:  # as the indexer decodes (`Collection.decode`), and so `hashsearch search`
                return self.coll.decode(data, name, limit)
            return decode_image(data, name, limit, draft=(draft, draft))
        except DecodeError as e:
            if e.reason.startswith("too many pixels"):
                option = (
                    "max_query_pixels (hashsearch serve --max-query-pixels)"
                    if query
                    else "max_pixels (hashsearch serve --max-pixels)"
                )
                found = re.match(r"too many pixels: (.*), above the limit", e.reason)
                what = found.group(1) if found else "its size"
                raise BadRequest(
                    413,
                    f"{name}: {what} pixels is above this server's limit of {limit:,} for "
                    f"{'a query' if query else 'an added image'} ({option}); send a smaller image",
                ) from e
            raise BadRequest(422, str(e)) from e

    # -- reads ---------------------------------------------------------------------------
    def search_features(
        self,
        feats: np.ndarray,
        k: int,
        radius: int | None,
        rerank: int | None,
        label: str | None,
        exclude: int | None = None,
    ) -> dict:
        """Search one query's features; results (id, key, label, distances) filtered by label."""
        if not 1 <= k <= MAX_K:
            raise BadRequest(422, f"k must be between 1 and {MAX_K}, got {k}")
        if radius is not None and not 0 <= radius <= self.coll.n_bits:
            raise BadRequest(422, f"radius must be between 0 and n_bits={self.coll.n_bits}, got {radius}")
        if rerank is not None and not 1 <= rerank <= 100_000:
            raise BadRequest(422, f"rerank must be between 1 and 100000 candidates, got {rerank}")
        if rerank and not self.coll.store_features:
            raise BadRequest(
                422,
                "rerank needs stored features, and this collection keeps none (indexed with --no-features); "
                "search without rerank",
            )
        t = time.perf_counter()
        with self.lock.read():
            hits = self.coll.search_records(feats, k, rerank=rerank, radius=radius, label=label, exclude=exclude)[0]
        results = []
        for h in hits:
            r = {"id": h["id"], "key": h["key"], "label": h["label"], "distance": h["hamming"]}
            if rerank:
                r["hamming"], r["rerank_distance"] = h["hamming"], h["rerank_distance"]
            results.append(r)
        mode = "rerank" if rerank else ("radius" if radius is not None else "hamming")
        return {
            "mode": mode,
            "k": k,
            "radius": radius,
            "rerank": rerank,
            "label": label,
            "results": results,
            "took_ms": round(1000 * (time.perf_counter() - t), 3),
        }

    def search_upload(self, data: bytes, name: str, content_type: str | None, **params) -> dict:
        """Search by an uploaded query image (decoded at reduced scale, under the query pixel limit)."""
        self.check_upload(data, name, content_type)
        feats = self.decoding(lambda: self.features([self.decode(data, name, query=True)]))
        return self.search_features(feats, **params)

    def search_id(self, image_id: int, **params) -> dict:
        """More like this: search by an indexed image (its stored features, else its file)."""
        self.entry(image_id)
        with self.lock.read():
            feats = None
            if self.coll.store_features:
                feats = np.asarray(self.coll.features_of(np.asarray([image_id], np.int64)), np.float32)
        if feats is None:
            data = self.image_bytes(image_id)
            feats = self.decoding(lambda: self.features([self.decode(data, f"image {image_id}")]))
        return self.search_features(feats, exclude=image_id, **params)

    def _record(self, image_id: int) -> dict:
        """The full record of an id (server side: it holds the file's path), or a 404."""
        with self.lock.read():
            e = self.coll.entries([image_id])[0]
        if e is None:
            raise BadRequest(404, f"no image with id {image_id} in this collection")
        return e

    def entry(self, image_id: int) -> dict:
        """What a client may see of an id's record: id, key (relative to its root), label; or a 404."""
        e = self._record(image_id)
        return {"id": e["id"], "key": e["key"], "label": e["label"]}

    def image_bytes(self, image_id: int) -> bytes:
        """The original file of an indexed image, located only through its stored record."""
        with self.lock.read():
            try:
                return self.coll.read_image(image_id)
            except KeyError:
                raise BadRequest(404, f"no image with id {image_id} in this collection") from None
            except OSError as e:
                key = (self.coll.entries([image_id])[0] or {}).get("key", "?")
                log.warning("image %d cannot be read: %s", image_id, e)
                raise BadRequest(
                    404,
                    f"the file of image {image_id} ({key}) cannot be read on the server; "
                    "if its folder moved, the collection needs `hashsearch relocate`",
                ) from None

    def list_entries(self, offset: int, limit: int) -> dict:
        """A page of the collection's records in id order: id, key, label; with the total count.

        Parameters
        ----------
        offset : int
            Records skipped (>= 0; past the end: an empty page).
        limit : int
            Records in the page, 1 to `MAX_LIST`.

        Raises
        ------
        BadRequest
            422 for an offset or limit out of range.
        """
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(422, f"limit must be between 1 and {MAX_LIST}, got {limit}")
        if offset < 0:
            raise BadRequest(422, f"offset must be 0 or more, got {offset}")
        with self.lock.read():
            ids = self.ids()
            page = ids[offset : offset + limit].tolist()
            records = self.coll.entries(page)
        return {
            "total": len(ids),
            "offset": offset,
            "limit": limit,
            "entries": [{"id": e["id"], "key": e["key"], "label": e["label"]} for e in records if e is not None],
        }

    def _thumb_path(self, record: dict) -> Path:
        name = hashlib.sha256(f"{record['id']}\0{record['digest']}\0{record['key']}".encode("utf-8", "surrogateescape"))
        return self.thumb_dir / (name.hexdigest()[:32] + ".jpg")

    def thumbnail(self, image_id: int) -> bytes:
        """A JPEG thumbnail, cached under the cache folder by id, digest and key."""
        path = self._thumb_path(self._record(image_id))
        if path.is_file():
            return path.read_bytes()
        data = self.decoding(self._make_thumbnail, self.image_bytes(image_id), f"image {image_id}")
        with self._thumb_lock:
            self.thumb_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return data

    def _make_thumbnail(self, data: bytes, name: str) -> bytes:
        im = self.decode(data, name, draft=THUMB_SIZE)
        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def stats(self) -> dict:
        with self.lock.read():
            info = self.coll.info()
        # Where the folders are is the server's business: a client sees how many images each holds.
        info["sources"] = [{"count": s["count"], "exists": s["exists"]} for s in info.get("sources", [])]
        info["mutations_enabled"] = self.api_key is not None
        info["evaluation"] = self.eval_json is not None
        return info

    def evaluation(self) -> dict:
        import json

        if self.eval_json is None:
            raise BadRequest(404, "no benchmark JSON was given; start the server with --eval FILE.json")
        try:
            return json.loads(self.eval_json.read_text())
        except (OSError, ValueError) as e:
            raise BadRequest(
                404,
                f"benchmark JSON {self.eval_json.name} cannot be read: "
                f"{getattr(e, 'strerror', None) or type(e).__name__}",
            ) from e

    # -- mutations -----------------------------------------------------------------------
    def key_problem(self, given: str | None) -> tuple[int, str] | None:
        """(status, message) when `given` does not unlock the mutating routes, else None."""
        if self.api_key is None:
            return 403, "mutating routes are disabled: start the server with --api-key or HASHSEARCH_API_KEY"
        import hmac

        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            return 401, "missing or wrong API key: send it in the X-API-Key header"
        return None

    def check_key(self, given: str | None) -> None:
        problem = self.key_problem(given)
        if problem is not None:
            raise BadRequest(*problem)

    def _save(self, what: str) -> None:
        """Save after a change (holding the write lock); a failure leaves memory equal to the disk."""
        try:
            self.coll.save(self.path)
        except CollectionError as e:
            log.error("%s not saved: %s", what, e)
            raise BadRequest(
                503,
                f"{what} failed: the collection could not be saved on the server, so nothing "
                "changed; try again later (the server's log has the reason)",
                {"Retry-After": "30"},
            ) from None

    def add_uploads(
        self,
        files: list[tuple[bytes, str, str | None]],
        labels: list[str | None],
        job: Job | None = None,
        keep_duplicates: bool = False,
    ) -> dict:
        """Decode uploaded images, extract their features and add them, then save atomically.

        Bad files are reported in "errors", not added; a file whose content the collection already
        holds (by `content_digest`, the pipeline's digest) is not added again but answered in
        "duplicates" with the existing id, unless `keep_duplicates`. Originals are stored in the
        collection folder (`Collection.uploads_dir`), named by digest.
        """
        digests = [content_digest(data) for data, _, _ in files]
        with self.lock.read():
            existing = {} if keep_duplicates else self.coll.ids_by_digest(digests)
            uploads = self.coll.uploads_dir
        new: list[_NewImage] = []
        first: set[str] = set()  # digests decoded in this request
        again: list[tuple[str, str]] = []  # (file, digest) of repeats within this request
        duplicates, errors = [], []
        for (data, name, ctype), lab, digest in zip(files, labels, digests):
            try:
                if digest in existing:
                    duplicates.append({"file": name, "id": existing[digest]})
                elif digest in first and not keep_duplicates:
                    again.append((name, digest))
                else:
                    self.check_upload(data, name, ctype)
                    feature = self.decoding(lambda: self.features([self.decode(data, name)])[0])
                    dest = uploads / f"{digest}.{check_image_bytes(data, name).lower()}"
                    new.append(_NewImage(data, name, lab, digest, feature, dest))
                    first.add(digest)
            except BadRequest as e:
                errors.append({"file": name, "status": e.status, "error": str(e)})
            finally:
                if job is not None:
                    job.done += 1
                    job.errors, job.duplicates = errors, duplicates
        id_of: dict[str, int] = dict(existing)
        ids: list[int] = []
        if new:
            with self.lock.write():
                self._changed()
                # A concurrent request may have added the same content since the check above.
                late = {} if keep_duplicates else self.coll.ids_by_digest(first)
                duplicates += [{"file": n.name, "id": late[n.digest]} for n in new if n.digest in late]
                adding = [n for n in new if n.digest not in late]
                written: list[Path] = []
                try:
                    for n in adding:
                        if not n.dest.exists():
                            uploads.mkdir(parents=True, exist_ok=True)
                            tmp = n.dest.with_name(f".{n.dest.name}.tmp-{threading.get_ident()}")
                            tmp.write_bytes(n.data)
                            os.replace(tmp, n.dest)
                            written.append(n.dest)
                    if adding:
                        ids = self.coll.add(
                            np.stack([n.feature for n in adding]),
                            [str(n.dest) for n in adding],
                            [n.label for n in adding],
                            [n.digest for n in adding],
                            root=uploads,
                        ).tolist()
                        self._save("adding the images")
                except BaseException:
                    for p in written:  # no orphaned upload for a change that did not happen
                        p.unlink(missing_ok=True)
                    raise
                count = len(self.coll)
            id_of |= late | {n.digest: i for n, i in zip(adding, ids)}
        else:
            with self.lock.read():
                count = len(self.coll)
        # A repeat within the request answers with the id its first copy got.
        duplicates += [{"file": name, "id": id_of[d]} for name, d in again if d in id_of]
        return {"ids": ids, "duplicates": duplicates, "errors": errors, "count": count}

    def _expire_jobs(self) -> None:
        now = time.time()
        for jid in [
            j.id for j in self.jobs.values() if j.finished is not None and now - j.finished > self.limits.job_ttl_s
        ]:
            del self.jobs[jid]

    def start_add_job(self, files, labels, keep_duplicates: bool = False) -> Job:
        """Run `add_uploads` in a background thread; at most `Limits.max_jobs` at once (else 503)."""
        with self._jobs_lock:
            self._expire_jobs()
            running = sum(j.state == "running" for j in self.jobs.values())
            if running >= self.limits.max_jobs:
                raise BadRequest(
                    503,
                    f"{running} background adds are running, the most this server runs at once "
                    f"(max_jobs={self.limits.max_jobs}); retry when one has finished",
                    {"Retry-After": "10"},
                )
            job = Job(id=uuid.uuid4().hex, total=len(files))
            self.jobs[job.id] = job

        def run():
            try:
                out = self.add_uploads(files, labels, job, keep_duplicates)
                job.ids, job.duplicates, job.errors, job.state = out["ids"], out["duplicates"], out["errors"], "done"
            except BadRequest as e:
                job.state, job.message = "failed", str(e)
            except Exception as e:  # a job must end in a state the client can read
                log.exception("background add %s failed", job.id)
                job.state, job.message = (
                    "failed",
                    f"the add failed on the server ({type(e).__name__}); nothing was added",
                )
            finally:
                job.finished = time.time()

        threading.Thread(target=run, daemon=True, name=f"add-{job.id[:8]}").start()
        return job

    def job(self, job_id: str) -> Job:
        with self._jobs_lock:
            self._expire_jobs()
            job = self.jobs.get(job_id)
        if job is None:
            raise BadRequest(
                404, f"no job with id {job_id[:64]!r} (finished jobs are kept for {self.limits.job_ttl_s:g} s)"
            )
        return job

    def remove(self, image_id: int) -> dict:
        """Remove an image, save, then delete the files the service stored for it: its uploaded
        original (when in the uploads folder and no other entry has that content) and its thumbnail."""
        with self.lock.write():
            record = self.coll.entries([image_id])[0]
            if record is None:
                raise BadRequest(404, f"no image with id {image_id} in this collection")
            self._changed()
            self.coll.remove([image_id])
            self._save(f"removing image {image_id}")
            others = self.coll.ids_by_digest([record["digest"]]) if record["digest"] else {}
            original = Path(record["path"])
            if original.parent.resolve() == self.coll.uploads_dir.resolve() and not others:
                original.unlink(missing_ok=True)
            self._thumb_path(record).unlink(missing_ok=True)
            count = len(self.coll)
        return {"removed": image_id, "count": count}
