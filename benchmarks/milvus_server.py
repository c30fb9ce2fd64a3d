"""Search on a real Milvus standalone server beside Milvus Lite and "flat", on the same learned codes.

Data as in benchmarks/search_scale.py (synthetic clustered 1280-d float16 features, codes
learned by ITQ fitted on 20,000 of them); default 200,000 entries at 64 bits. The server is the
PyPI package `milvus` (Milvus 2.3.5 standalone), started for this run on free ports with a
temporary data folder and authorization on (tests/distributed/conftest.py's `run_milvus_server`),
stopped at the end.

Per back end: build (`add` of every code), open (`load` of the saved index: for Milvus, the
mirror plus a connection and a count), single-query latency p50/p99 in ms for k = 1, 10, 100 over
--nq queries (one query per call, as `serve` asks), and whether the k = 10 neighbours and
distances equal flat's for every query. The server is measured three times: as `add` leaves it
(the entities in growing segments, which every search scans), after `save` (which flushes:
sealed segments) and reopening, and once the server reports every row indexed (BIN_FLAT).

Run (the lock is shared with the other benchmarks on this 2-core machine):

    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/milvus_server.py \\
        --out benchmarks/results/milvus-server.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hashsearch.hashing import create_hasher
from hashsearch.index import create_index
from hashsearch.index.milvus_backend import MilvusIndex

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


search_scale = _module("search_scale", ROOT / "benchmarks" / "search_scale.py")  # make_features, encode, latency


def measure(label, make, db, queries, work: Path, flat_ids=None, flat_d=None, server=False) -> list[dict]:
    t = time.perf_counter()
    index = make()
    index.add(db)
    build_s = time.perf_counter() - t
    rows = []
    if server:  # as `add` leaves it: the entities in growing segments
        rows.append(_latencies(f"{label}, after add", index, queries, build_s, None, flat_ids, flat_d))
    path = work / label.split()[0]
    path.mkdir()
    t = time.perf_counter()
    index.save(path)  # on a server: a flush, sealing the segments
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    loaded = type(index).load(path)
    open_ms = (time.perf_counter() - t) * 1e3
    print(f"  {label}: built in {build_s:.1f} s, saved in {save_s:.1f} s, opened in {open_ms:.0f} ms", file=sys.stderr)
    name = f"{label}, saved ({save_s:.1f} s) and opened" if server else label
    rows.append(_latencies(name, loaded, queries, None if server else build_s, open_ms, flat_ids, flat_d))
    if server:
        wait_s = wait_indexed(loaded)
        rows.append(
            _latencies(f"{label}, index built ({wait_s:.1f} s more)", loaded, queries, None, None, flat_ids, flat_d)
        )
    if isinstance(loaded, MilvusIndex):
        loaded._client.drop_collection(loaded.collection)
    for ix in (loaded, index):
        if hasattr(ix, "close"):
            ix.close()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def wait_indexed(index: MilvusIndex, timeout_s: float = 600) -> float:
    """Seconds until the server reports every row of the collection indexed (no pending rows)."""
    t = time.perf_counter()
    name = index._client.list_indexes(index.collection)[0]
    while time.perf_counter() - t < timeout_s:
        d = index._client.describe_index(index.collection, name)
        if int(d.get("pending_index_rows", 1)) == 0 and int(d.get("indexed_rows", -1)) >= len(index):
            return time.perf_counter() - t
        time.sleep(0.5)
    raise TimeoutError(f"the server had not indexed {len(index)} rows after {timeout_s} s")


def _latencies(label, index, queries, build_s, open_ms, flat_ids, flat_d) -> dict:
    stats = {}
    for k in (1, 10, 100):
        index.search(queries[:2], k)  # warm-up
        stats[k] = search_scale.latency(index, queries, k=k)
    res = index.search(queries, 10)
    same = None if flat_ids is None else bool((res.ids == flat_ids).all() and (res.distances == flat_d).all())
    print(f"  {label}: k=10 p50 {stats[10][0]:.3f} ms", file=sys.stderr, flush=True)
    return {"label": label, "build_s": build_s, "open_ms": open_ms, "stats": stats, "same": same, "res": res}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="database size (default 200,000)")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--nq", type=int, default=200, help="queries timed one by one (default 200)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    conftest = _module("milvus_server_fixture", ROOT / "tests" / "distributed" / "conftest.py")

    t0 = time.perf_counter()
    feats, _, qfeats, _ = search_scale.make_features(args.n, args.nq)
    sample = feats[np.random.default_rng(1).choice(args.n, min(args.n, 20_000), replace=False)].astype(np.float32)
    hasher = create_hasher("itq", n_bits=args.bits).fit(sample)
    db, queries = search_scale.encode(hasher, feats), search_scale.encode(hasher, qfeats)
    del feats
    gen_s = time.perf_counter() - t0
    print(f"  data and codes: {gen_s:.0f} s", file=sys.stderr, flush=True)
    work = Path(tempfile.mkdtemp(prefix="hashsearch-bench-milvus-"))
    rows = []
    try:
        flat = measure("flat", lambda: create_index("flat", n_bits=args.bits), db, queries, work)
        rows += flat
        truth = flat[0]["res"]
        rows += measure(
            "milvus (Lite 2.5.1, BIN_FLAT)",
            lambda: create_index("milvus", n_bits=args.bits),
            db,
            queries,
            work,
            truth.ids,
            truth.distances,
        )
        t = time.perf_counter()
        with conftest.run_milvus_server(work / "server") as server:
            start_s = time.perf_counter() - t
            os.environ["HASHSEARCH_MILVUS_TOKEN"] = server.token  # as a user gives it; `load` reads it
            rows += measure(
                f"milvus (server {server.version}, BIN_FLAT)",
                lambda: create_index("milvus", n_bits=args.bits, uri=server.uri),
                db,
                queries,
                work,
                truth.ids,
                truth.distances,
                server=True,
            )
            version = server.version
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Command: `{' '.join(['python'] + sys.argv)}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, no GPU; server, client and benchmark on the same machine (loopback). "
        "Times are wall-clock; other jobs may share the machine (the benchmark lock keeps benchmarks apart, "
        "not tests).",
        "",
        f"Versions: Milvus server {version} (PyPI `milvus` {_version('milvus')}, started in {start_s:.1f} s), "
        f"Milvus Lite {_version('milvus-lite')}, pymilvus {_version('pymilvus')}.",
        "",
        f"Data: synthetic, not images: {args.n:,} {args.bits}-bit codes learned by ITQ from clustered 1280-d "
        f"features (as benchmarks/search_scale.py); {args.nq} queries. Data generation and encoding: {gen_s:.0f} s.",
        "",
        f"Latency: one query per call, p50 / p99 in ms over {args.nq} queries. Build: `add` of all codes. "
        "Open: `load` of the saved index. Same as flat: the k = 10 ids and distances equal flat's for every query.",
        "",
        "| back end | build s | open ms | k=1 | k=10 | k=100 | same as flat |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['stats'][k][0]:.3f} / {r['stats'][k][1]:.3f}" for k in (1, 10, 100))
        build = "" if r["build_s"] is None else f"{r['build_s']:.1f}"
        opened = "" if r["open_ms"] is None else f"{r['open_ms']:.1f}"
        same = "(reference)" if r["same"] is None else ("yes" if r["same"] else "NO")
        lines.append(f"| {r['label']} | {build} | {opened} | {cells} | {same} |")
    lines += ["", f"Total benchmark time: {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
