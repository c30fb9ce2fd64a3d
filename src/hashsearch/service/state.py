"""The state behind the HTTP service: one open `Collection`, a readers-writer lock, thumbnails, jobs.

Every route goes through `ServiceState`, which calls the library (`Collection`, `encode_queries`,
`decode_image`) and owns the concurrency rules:

* searches hold the lock shared, mutations (add, remove, and the atomic save that follows) hold it
  exclusive, so a search sees the collection either before or after a mutation, never half-way;
* the expensive part of an add (decoding and the backbone) runs outside the lock;
* `Collection.save` deletes the previous generation's files; readers never hold an sqlite handle
  across the lock, and features/index arrays that were memory-mapped from a deleted file stay
  valid on POSIX, so no reader sees a missing file.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashsearch.collection import Collection
from hashsearch.data.decode import DecodeError, check_image_bytes, decode_image
from hashsearch.pipeline.build import encode_queries

#: Default upload limit in bytes (20 MB) and pixel limit (40 megapixels).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
THUMB_SIZE = 128
MAX_K = 1000


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


class _Held:
    def __init__(self, lock: RWLock, write: bool) -> None:
        self.lock, self.write = lock, write

    def __enter__(self):
        self.lock._acquire(self.write)
        return self

    def __exit__(self, *exc):
        self.lock._release(self.write)


class BadRequest(ValueError):
    """A client error: `status` (4xx) and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """A long add running in the background; `GET /jobs/{id}` reports it."""

    id: str
    total: int
    done: int = 0
    state: str = "running"  # running | done | failed
    ids: list[int] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    message: str = ""
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {
            "id": self.id, "state": self.state, "total": self.total, "done": self.done,
            "ids": self.ids, "errors": self.errors, "message": self.message,
        }


class ServiceState:
    """One collection served over HTTP: search, records, images, thumbnails, adds and removes."""

    def __init__(
        self,
        collection_path: str | os.PathLike,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_PIXELS,
        eval_json: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(collection_path)
        self.coll = Collection.open(self.path)
        self.api_key = api_key or None
        base = Path(cache_dir) if cache_dir else self.path.parent / (self.path.name + ".cache")
        self.thumb_dir = base / "thumbs"
        self.upload_dir = base / "uploads"
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.eval_json = Path(eval_json) if eval_json else None
        self.lock = RWLock()
        self.jobs: dict[str, Job] = {}
        self._thumb_lock = threading.Lock()
        self._encoder = None
        self._encoder_lock = threading.Lock()

    def features(self, images: list) -> np.ndarray:
        """Backbone features of decoded images, by the collection's encoder (`Collection.encoder`:
        ONNX Runtime, exported on first use and then read from the cache on disk, with the
        collection's int8 model if it has one; PyTorch if onnxruntime cannot load)."""
        if self._encoder is None:
            with self._encoder_lock:  # the first call exports and opens the session, once
                if self._encoder is None:
                    encoder = self.coll.encoder()
                    feats = encode_queries(self.coll.backbone, images, encoder)
                    self._encoder = encoder
                    return feats
        return encode_queries(self.coll.backbone, images, self._encoder)

    # -- input checks --------------------------------------------------------------------
    def check_upload(self, data: bytes, name: str, content_type: str | None) -> None:
        """Size, declared content type and magic bytes of one upload (no decoding)."""
        if len(data) > self.max_upload_bytes:
            raise BadRequest(413, f"{name}: upload is {len(data)} bytes; the limit is {self.max_upload_bytes} bytes")
        if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
            raise BadRequest(415, f"{name}: content type {content_type!r} is not an image; send image/jpeg, image/png, ...")
        try:
            check_image_bytes(data, name)
        except DecodeError as e:
            raise BadRequest(415, str(e)) from e

    def decode(self, data: bytes, name: str):
        """Decode an upload, mapping every decoder failure to a 4xx."""
        try:
            return decode_image(data, name, self.max_pixels)
        except DecodeError as e:
            status = 413 if "pixel" in str(e).lower() else 422
            raise BadRequest(status, str(e)) from e

    # -- reads ---------------------------------------------------------------------------
    def search_features(self, feats: np.ndarray, k: int, radius: int | None, rerank: int | None,
                        label: str | None, exclude: int | None = None) -> dict:
        """Search one query's features; results with their records, filtered by label."""
        if not 1 <= k <= MAX_K:
            raise BadRequest(422, f"k must be between 1 and {MAX_K}, got {k}")
        if radius is not None and not 0 <= radius <= self.coll.n_bits:
            raise BadRequest(422, f"radius must be between 0 and n_bits={self.coll.n_bits}, got {radius}")
        if rerank is not None and not 1 <= rerank <= 100_000:
            raise BadRequest(422, f"rerank must be between 1 and 100000 candidates, got {rerank}")
        t = time.perf_counter()
        with self.lock.read():
            n = len(self.coll)
            want = k + (exclude is not None)
            fetch = want if label is None else min(n, max(want * 20, 200))
            while True:
                res = self.coll.search(feats, k=max(fetch, 1), rerank=rerank, radius=radius)
                ids = [int(i) for i in res.ids[0] if i >= 0]
                dist = [float(d) for d, i in zip(res.distances[0], res.ids[0]) if i >= 0]
                ents = self.coll.entries(ids)
                rows = [
                    (i, d, e) for i, d, e in zip(ids, dist, ents)
                    if e is not None and i != exclude and (label is None or e["label"] == label)
                ]
                if len(rows) >= k or fetch >= n or len(ids) < fetch:
                    break
                fetch = min(n, fetch * 8)
            hamming = self._hamming(feats, [r[0] for r in rows[:k]]) if rerank else None
        results = []
        for j, (i, d, e) in enumerate(rows[:k]):
            r = {"id": i, "path": e["key"], "label": e["label"]}
            if rerank:
                r["distance"], r["hamming"], r["rerank_distance"] = hamming[j], hamming[j], d
            else:
                r["distance"] = int(d)
            results.append(r)
        mode = "rerank" if rerank else ("radius" if radius is not None else "hamming")
        return {"mode": mode, "k": k, "radius": radius, "rerank": rerank, "label": label,
                "results": results, "took_ms": round(1000 * (time.perf_counter() - t), 3)}

    def _hamming(self, feats: np.ndarray, ids: list[int]) -> list[int]:
        from hashsearch.codes import hamming_distances

        if not ids:
            return []
        q = self.coll.hasher.encode(feats)
        db = self.coll.hasher.encode(np.asarray(self.coll.features_of(np.asarray(ids, np.int64)), np.float32))
        return [int(x) for x in hamming_distances(q, db)[0]]

    def search_upload(self, data: bytes, name: str, content_type: str | None, **params) -> dict:
        self.check_upload(data, name, content_type)
        feats = self.features([self.decode(data, name)])
        return self.search_features(feats, **params)

    def search_id(self, image_id: int, **params) -> dict:
        """More like this: search by an indexed image (its stored features, else its file)."""
        self.entry(image_id)
        with self.lock.read():
            feats = None
            if self.coll.store_features:
                feats = np.asarray(self.coll.features_of(np.asarray([image_id], np.int64)), np.float32)
        if feats is None:
            feats = self.features([self.decode(self.image_bytes(image_id), str(image_id))])
        return self.search_features(feats, exclude=image_id, **params)

    def entry(self, image_id: int) -> dict:
        """The record of an id in the index, or a 404."""
        with self.lock.read():
            e = self.coll.entries([image_id])[0]
        if e is None:
            raise BadRequest(404, f"no image with id {image_id} in this collection")
        return e

    def image_bytes(self, image_id: int) -> bytes:
        """The original file of an indexed image, located only through its stored record."""
        key = self.entry(image_id)["key"]
        try:
            if "::" in key:
                import tarfile

                archive, member = key.split("::", 1)
                with tarfile.open(archive) as tar:
                    f = tar.extractfile(member)
                    if f is None:
                        raise OSError("not a file")
                    return f.read()
            return Path(key).read_bytes()
        except (OSError, KeyError) as e:
            raise BadRequest(404, f"the file of image {image_id} ({key}) cannot be read: {e}") from e

    def thumbnail(self, image_id: int) -> bytes:
        """A JPEG thumbnail, cached under the cache folder by id and file digest."""
        key = self.entry(image_id)["key"]
        name = hashlib.sha256(f"{image_id}\0{key}".encode()).hexdigest()[:32] + ".jpg"
        path = self.thumb_dir / name
        if path.is_file():
            return path.read_bytes()
        im = self.decode(self.image_bytes(image_id), key)
        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self.thumb_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return data

    def stats(self) -> dict:
        with self.lock.read():
            info = self.coll.info()
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
            raise BadRequest(404, f"benchmark JSON {self.eval_json.name} cannot be read: {e}") from e

    # -- mutations -----------------------------------------------------------------------
    def check_key(self, given: str | None) -> None:
        if self.api_key is None:
            raise BadRequest(403, "mutating routes are disabled: start the server with --api-key or HASHSEARCH_API_KEY")
        import hmac

        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise BadRequest(401, "missing or wrong API key: send it in the X-API-Key header")

    def add_uploads(self, files: list[tuple[bytes, str, str | None]], labels: list[str | None], job: Job | None = None) -> dict:
        """Decode, encode and add uploaded images, then save atomically. Bad files are reported, not added."""
        feats, keys, labs, digests, errors = [], [], [], [], []
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        for (data, name, ctype), lab in zip(files, labels):
            try:
                self.check_upload(data, name, ctype)
                im = self.decode(data, name)
            except BadRequest as e:
                errors.append({"file": name, "status": e.status, "error": str(e)})
            else:
                digest = hashlib.sha256(data).hexdigest()
                dest = self.upload_dir / f"{digest}.{check_image_bytes(data, name).lower()}"
                if not dest.exists():
                    tmp = dest.with_suffix(".tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, dest)
                feats.append(self.features([im])[0])
                keys.append(str(dest))
                labs.append(lab)
                digests.append(digest)
            if job is not None:
                job.done += 1
                job.errors = errors
        ids: list[int] = []
        if feats:
            with self.lock.write():
                ids = self.coll.add(np.stack(feats), keys, labs, digests).tolist()
                self.coll.save(self.path)
        return {"ids": ids, "errors": errors, "count": len(self.coll)}

    def start_add_job(self, files, labels) -> Job:
        job = Job(id=uuid.uuid4().hex, total=len(files))
        self.jobs[job.id] = job

        def run():
            try:
                out = self.add_uploads(files, labels, job)
                job.ids, job.errors, job.state = out["ids"], out["errors"], "done"
            except Exception as e:  # a job must end in a state the client can read
                job.state, job.message = "failed", f"{type(e).__name__}: {e}"

        threading.Thread(target=run, daemon=True, name=f"add-{job.id[:8]}").start()
        return job

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise BadRequest(404, f"no job with id {job_id!r}")
        return job

    def remove(self, image_id: int) -> dict:
        with self.lock.write():
            n = self.coll.remove([image_id])
            if n == 0:
                raise BadRequest(404, f"no image with id {image_id} in this collection")
            self.coll.save(self.path)
            return {"removed": image_id, "count": len(self.coll)}
