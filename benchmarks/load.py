"""Bounded load test of `hashsearch serve` on loopback, with a concurrent add that must lose nothing.

    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/load.py

Builds (once, from the feature cache) a collection of the cifar10-1k 59,000-image database
(ITQ 64 bits fitted on the protocol's training images, EfficientNet-Lite0 128 px features),
starts the server in a subprocess, and runs N clients (threads, one HTTP connection each)
issuing a fixed number of searches: half "more like this" (GET /search/{id}, no backbone work),
half image uploads (POST /search with a CIFAR-10 query image: decode + backbone + search).
While they run, another client adds query images in several POST /images requests. Afterwards
the count and every new id (record, label, key) are checked over HTTP and on disk.
Writes benchmarks/results/load.md.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from hashsearch.backbones import create_backbone
from hashsearch.collection import Collection
from hashsearch.data.protocols import cifar10_root, load_protocol
from hashsearch.data.sources import open_source
from hashsearch.evaluation.report import machine_description
from hashsearch.experiments import split_features
from hashsearch.hashing import create_hasher

KEY = "load-test-key"


def build(path: Path, feats) -> None:
    hasher = create_hasher("itq", n_bits=64, seed=0).fit(feats.train.features)
    coll = Collection.create(create_backbone("efficientnet-lite0", input_size=128), hasher)
    db = feats.database
    coll.add(db.features, [r.key for r in db.records], [r.label for r in db.records], db.digests)
    coll.save(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--searches", type=int, default=2000)
    ap.add_argument("--adds", type=int, default=4, help="POST /images requests during the load")
    ap.add_argument("--per-add", type=int, default=5, help="images per add request")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hashsearch-load")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load.md")
    args = ap.parse_args()

    split = load_protocol("cifar10-1k")
    feats = split_features(open_source(cifar10_root()), split, create_backbone("efficientnet-lite0", input_size=128))
    n_db = len(feats.database.labels)
    path = args.work / "cifar10-1k.hsx"
    if path.exists():
        import shutil

        shutil.rmtree(path)  # a fresh copy each run: the adds below change it
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    build(path, feats)
    print(f"built {n_db}-image collection in {time.perf_counter() - t:.1f}s", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    code = (
        "import sys, uvicorn; from hashsearch.service import create_app; "
        f"uvicorn.run(create_app(sys.argv[1], api_key={KEY!r}, cache_dir=sys.argv[2]), host='127.0.0.1', port={port}, "
        "log_level='warning')"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(path), str(args.work / "cache")])
    try:
        with httpx.Client(base_url=url) as c:
            for _ in range(600):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise SystemExit("server did not start")
        run_load(url, args, feats, n_db, path)
    finally:
        server.terminate()
        server.wait(30)


def run_load(url, args, feats, n_db, path) -> None:
    rng = random.Random(0)
    queries = [r.key for r in feats.query.records]
    qbytes = {k: Path(k).read_bytes() for k in queries[:200]}
    qkeys = list(qbytes)
    adds = [r for r in feats.query.records[200 : 200 + args.adds * args.per_add]]
    jobs = [("id", rng.randrange(n_db)) if i % 2 == 0 else ("upload", rng.choice(qkeys)) for i in range(args.searches)]
    lat: dict[str, list[float]] = {"id": [], "upload": []}
    errors: list[str] = []
    lock = threading.Lock()
    it = iter(jobs)

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                t = time.perf_counter()
                try:
                    if job[0] == "id":
                        r = c.get(f"/search/{job[1]}", params={"k": 10})
                    else:
                        r = c.post(
                            "/search", params={"k": 10}, files={"image": ("q.jpg", qbytes[job[1]], "image/jpeg")}
                        )
                    ok = r.status_code == 200 and len(r.json()["results"]) == 10
                    if not ok:
                        errors.append(f"{job}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{job}: {type(e).__name__} {e}")
                with lock:
                    lat[job[0]].append(time.perf_counter() - t)

    added: list[tuple[int, str]] = []
    add_times: list[float] = []
    add_ends: list[float] = []

    def adder():
        time.sleep(1.0)  # let the load start first
        with httpx.Client(base_url=url, timeout=300) as c:
            for a in range(args.adds):
                batch = adds[a * args.per_add : (a + 1) * args.per_add]
                files = [("images", (Path(r.key).name, Path(r.key).read_bytes(), "image/jpeg")) for r in batch]
                t = time.perf_counter()
                r = c.post(
                    "/images",
                    files=files,
                    data={"labels": ",".join(r.label for r in batch)},
                    headers={"X-API-Key": KEY},
                )
                add_times.append(time.perf_counter() - t)
                add_ends.append(time.perf_counter() - t0)
                if r.status_code != 200 or r.json()["errors"]:
                    errors.append(f"add {a}: {r.status_code} {r.text[:300]}")
                    continue
                added.extend(zip(r.json()["ids"], [x.label for x in batch]))

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    add_thread = threading.Thread(target=adder)
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    add_thread.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    add_thread.join()

    # Nothing lost: count, ids and records over HTTP, and the collection on disk.
    n_add = args.adds * args.per_add
    with httpx.Client(base_url=url, timeout=60) as c:
        count = c.get("/stats").json()["count"]
        recs = [c.get(f"/entries/{i}").json() for i, _ in added]
    ids_ok = len({i for i, _ in added}) == n_add and all(
        r.get("id") == i and r.get("label") == lab for r, (i, lab) in zip(recs, added)
    )
    disk = Collection.open(path)
    disk_ok = len(disk) == n_db + n_add and all(
        e is not None and e["label"] == lab for e, (_, lab) in zip(disk.entries([i for i, _ in added]), added)
    )
    all_lat = lat["id"] + lat["upload"]
    done = len(all_lat)
    lines = [
        "# Load test: `hashsearch serve` on loopback",
        "",
        "Command: `flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/load.py`"
        + (f" (--clients {args.clients} --searches {args.searches} --adds {args.adds} --per-add {args.per_add})"),
        "",
        f"Index: cifar10-1k database, {n_db} CIFAR-10 images, ITQ 64 bits, EfficientNet-Lite0 128 px features (flat exact index).",
        f"Machine: {machine_description()}; server (uvicorn, one process) and clients on the same machine, which is shared with other work.",
        f"Load: {args.clients} concurrent clients, {args.searches} searches (k=10), half GET /search/{{id}} (stored features, "
        "no backbone), half POST /search with a CIFAR-10 query JPEG (decode + backbone on ONNX Runtime + search); "
        f"meanwhile {args.adds} POST /images requests of {args.per_add} images each (each saves the whole collection atomically).",
        "",
        "| requests | completed | errors | wall s | searches/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| all searches | {done} | {len(errors)} | {wall:.1f} | {done / wall:.1f} | {pct(all_lat, 50):.1f} | {pct(all_lat, 99):.1f} |",
        f"| GET /search/{{id}} | {len(lat['id'])} | | | | {pct(lat['id'], 50):.1f} | {pct(lat['id'], 99):.1f} |",
        f"| POST /search (upload) | {len(lat['upload'])} | | | | {pct(lat['upload'], 50):.1f} | {pct(lat['upload'], 99):.1f} |",
        "",
        f"Concurrent adds: {len(added)} of {n_add} images added, "
        f"{' / '.join(f'{x:.1f}' for x in add_times)} s per request (decode + backbone + add + atomic save), "
        f"finished at {' / '.join(f'{x:.1f}' for x in add_ends)} s into the {wall:.1f} s load; "
        f"count afterwards {count} (expected {n_db + n_add}); new ids and labels checked over HTTP: "
        f"{'ok' if ids_ok else 'MISMATCH'}; reopened from disk: {'ok' if disk_ok else 'MISMATCH'}.",
        "",
    ]
    if errors:
        lines += ["Errors (first 10):", ""] + [f"- {e}" for e in errors[:10]] + [""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if errors or count != n_db + n_add or not ids_ok or not disk_ok:
        raise SystemExit("load test FAILED: see above")


if __name__ == "__main__":
    main()
