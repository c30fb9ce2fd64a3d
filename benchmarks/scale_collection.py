"""A collection, not only an index, at 10^6-10^8 entries: its entries database (SQLite), and an
add of 10,000 real images and a remove of 10,000 ids, with the bytes each save writes.

Data. The N base entries are synthetic and bypass the image pipeline: 64-bit codes drawn around
the codes of the 10,000 real images (a real image's ITQ code with each bit flipped with
probability 1/8), pq-8 re-rank rows (8 random bytes), and records (key
``synthetic/<id>.jpg``, one of 10 labels, a random 32-hex-digit digest). They are written
straight into the first generation of a collection that `Collection.create` + `save` made
(index with the back end's own `save`; rows with numpy; entries into the collection's SQLite
schema, in transactions of 10^6 rows, the digest index made after), and the manifest's
checksums recomputed. The add is of the 10,000 CIFAR-10 (JPEG) test images through the
collection's own path (`hashsearch.pipeline.build.add_images`, as `hashsearch add` runs it),
EfficientNet-Lite0 at 128 px, features from the feature cache (computed on a first run); ITQ
(64 bits) and the pq-8 store are fitted on those 10,000 features. The remove is of 10,000
random base ids (`Collection.remove`). Bytes written: the kernel's count for this process
(/proc/self/io write_bytes, after an os.sync), so links, SQLite's pages and fsyncs are as the
disk saw them.

    flock /tmp/hashsearch-bench.lock nice -n 10 .venv/bin/python benchmarks/scale_collection.py run --n 1000000
    flock /tmp/hashsearch-bench.lock nice -n 10 .venv/bin/python benchmarks/scale_collection.py run --n 10000000
    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/scale_collection.py run --n 100000000
    .venv/bin/python benchmarks/scale_collection.py report --out benchmarks/results/scale-collection.md

Work files go under $HS_SCALE_COLL (default /tmp/hs-scale-coll; each run deletes its
collection when done, `--keep` keeps it); measurements under $HS_SCALE_COLL/results, from which
`report` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 1_000_000
N_CHANGE = 10_000
CIFAR = Path(os.environ.get("HS_CIFAR", Path.home() / ".cache/hashsearch/cifar10")) / "test"
CACHE = Path(os.environ.get("HS_FEATURE_CACHE", Path.home() / ".cache/hashsearch/features"))


def root() -> Path:
    return Path(os.environ.get("HS_SCALE_COLL", "/tmp/hs-scale-coll"))


def written() -> int:
    """Bytes this process has caused to be written to disk (after flushing what came before)."""
    os.sync()
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"])


def gen_dir(path: Path) -> Path:
    return path / (path / "CURRENT").read_text().strip()


def gen_bytes(gen: Path, before: dict | None = None) -> tuple[int, int, dict]:
    """(bytes of the generation's files, bytes of them shared with `before`'s inodes, inodes)."""
    inodes, total, shared = {}, 0, 0
    for p in gen.rglob("*"):
        if p.is_file():
            st = p.stat()
            inodes[st.st_ino] = st.st_size
            total += st.st_size
            if before is not None and st.st_ino in before:
                shared += st.st_size
    return total, shared, inodes


def percentiles(times: list[float]) -> dict:
    t = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}


def lookups(coll, n_base: int, rng) -> dict:
    """Entries lookup latency: one id, ten ids, one digest."""
    one, ten, dig = [], [], []
    ids = rng.integers(0, n_base, 1000)
    for i in ids:
        t = time.perf_counter()
        e = coll.entries([int(i)])
        one.append(time.perf_counter() - t)
        assert e[0] is None or e[0]["id"] == int(i)
    for _ in range(200):
        batch = rng.integers(0, n_base, 10).tolist()
        t = time.perf_counter()
        coll.entries(batch)
        ten.append(time.perf_counter() - t)
    digests = [e["digest"] for e in coll.entries(ids[:200].tolist()) if e is not None]
    for d in digests:
        t = time.perf_counter()
        coll.ids_by_digest([d])
        dig.append(time.perf_counter() - t)
    return {"id": percentiles(one), "ten_ids": percentiles(ten), "digest": percentiles(dig)}


def searches(coll, Q: np.ndarray) -> dict:
    """One query at a time: k=10 Hamming (ties by id: the index alone), and coarse-to-fine (rerank=100)."""
    out = {}
    for name, kw in (("k10", {"k": 10, "ties": "id"}), ("rerank100", {"k": 10, "rerank": 100})):
        coll.search(Q[:1], **kw)  # first-use costs (tables, id order) are not a query's
        times = []
        for q in Q:
            t = time.perf_counter()
            coll.search(q[None], **kw)
            times.append(time.perf_counter() - t)
        out[name] = percentiles(times)
    return out


def build_base(path: Path, n: int, backbone, hasher, store_spec: str, index_name: str, F: np.ndarray, rng) -> dict:
    """The collection at `path` with `n` synthetic entries in its first generation (see the module docstring)."""
    from hashsearch.collection import _SCHEMA, Collection
    from hashsearch.fileio import file_sha256
    from hashsearch.index import create_index
    from hashsearch.types import Codes

    out = {}
    coll = Collection.create(backbone, hasher, index=index_name, rerank_store=store_spec)
    coll.rerank_store.fit(F)
    coll.save(path)
    gen = gen_dir(path)
    real = np.ascontiguousarray(hasher.encode(F).data).view(np.uint64).ravel()
    t = time.perf_counter()
    index = create_index(index_name, n_bits=64)
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        r = rng.integers(0, 2**63, (3, m), dtype=np.int64).view(np.uint64)
        codes = real[rng.integers(0, len(real), m)] ^ (r[0] & r[1] & r[2])
        index.add(Codes(codes.view(np.uint8).reshape(m, 8), 64))
    shutil.rmtree(gen / "index")
    (gen / "index").mkdir()
    index.save(gen / "index")
    out["index_build_s"] = time.perf_counter() - t
    del index
    store = coll.rerank_store
    t = time.perf_counter()
    rows = np.lib.format.open_memmap(gen / "features.npy", "w+", store.row_dtype, (n, store.row_width))
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        rows[lo : lo + m] = rng.integers(0, 256, (m, store.row_width), dtype=np.uint8)
    rows.flush()
    del rows
    np.save(gen / "feature_ids.npy", np.arange(n, dtype=np.int64))
    out["rows_build_s"] = time.perf_counter() - t
    # Entries: the collection's schema, rows inserted in transactions of CHUNK, the digest index after.
    db_path = gen / "entries.sqlite"
    db_path.unlink()
    labels = [f"class{j}".encode() for j in range(10)]
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.executescript(_SCHEMA.replace("CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest);", ""))
        db.execute("INSERT INTO roots VALUES (0, ?, 0)", (os.fsencode(str(root() / "synthetic")),))
        t = time.perf_counter()
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            digests = rng.integers(0, 2**63, (m, 2), dtype=np.int64).view(np.uint64)
            db.executemany(
                "INSERT INTO entries VALUES (?, 0, ?, ?, ?)",
                (
                    (i, b"synthetic/%09d.jpg" % i, labels[i % 10], f"{a:016x}{b:016x}")
                    for i, (a, b) in zip(range(lo, lo + m), digests.tolist())
                ),
            )
            db.commit()
        out["sqlite_insert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        db.execute("CREATE INDEX entries_digest ON entries (digest)")
        db.commit()
        out["sqlite_digest_index_s"] = time.perf_counter() - t
    out["sqlite_rows_per_s"] = n / (out["sqlite_insert_s"] + out["sqlite_digest_index_s"])
    out["sqlite_bytes"] = db_path.stat().st_size
    t = time.perf_counter()
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["count"] = n
    manifest["files"] = {
        str(p.relative_to(gen)): file_sha256(p)
        for p in sorted(gen.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (gen / "manifest.json").write_text(json.dumps(manifest, indent=1))
    out["checksums_s"] = time.perf_counter() - t
    out["base_bytes"] = {str(p.relative_to(gen)): p.stat().st_size for p in sorted(gen.rglob("*")) if p.is_file()}
    return out


def run(args) -> None:
    from hashsearch.backbones import create_backbone
    from hashsearch.collection import Collection
    from hashsearch.data.sources import open_source
    from hashsearch.hashing import create_hasher
    from hashsearch.pipeline.build import add_images
    from hashsearch.pipeline.local import extract_features

    n = args.n
    rng = np.random.default_rng(0)
    work = root() / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "c.hsx"
    res: dict = {
        "n": n,
        "index": args.index,
        "store": args.store,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    t0 = time.perf_counter()
    backbone = create_backbone("efficientnet-lite0", input_size=128)
    source = open_source(CIFAR)
    t = time.perf_counter()
    ex = extract_features(source, backbone, cache_dir=CACHE, progress=False)
    res["features_s"], res["features_cached"] = time.perf_counter() - t, ex.n_cached
    F = np.asarray(ex.features, np.float32)
    hasher = create_hasher("itq", n_bits=64, seed=0).fit(F)
    res["base"] = build_base(path, n, backbone, hasher, args.store, args.index, F, rng)
    print(json.dumps(res["base"], indent=1), flush=True)

    t = time.perf_counter()
    coll = Collection.open(path, verify=False)
    res["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    Collection.open(path, verify=True)
    res["open_verify_s"] = time.perf_counter() - t
    Q = F[rng.choice(len(F), 50, replace=False)]
    res["lookup_before"] = lookups(coll, n, rng)
    res["search_before"] = searches(coll, Q)

    for what in ("add", "remove"):
        gen = gen_dir(path)
        _, _, inodes = gen_bytes(gen)
        t = time.perf_counter()
        if what == "add":
            ids, report = add_images(coll, source, cache_dir=CACHE, progress=False)
            assert len(ids) == N_CHANGE, report.summary()
            res["add_features_s"] = report.timings.get("features")
        else:
            gone = rng.choice(n, N_CHANGE, replace=False)
            assert coll.remove(gone) == N_CHANGE
        change_s = time.perf_counter() - t
        w0 = written()
        t = time.perf_counter()
        coll.save(path)
        save_s = time.perf_counter() - t
        w = written() - w0
        total, shared, _ = gen_bytes(gen_dir(path), inodes)
        res[what] = {
            "change_s": change_s,
            "save_s": save_s,
            "written_bytes": w,
            "generation_bytes": total,
            "shared_bytes": shared,
            "deltas": coll.manifest.get("deltas", []),
        }
        print(what, json.dumps(res[what]), flush=True)
    t = time.perf_counter()
    coll = Collection.open(path, verify=False)
    res["open_after_s"] = time.perf_counter() - t
    res["lookup_after"] = lookups(coll, n, rng)
    res["search_after"] = searches(coll, Q)
    hits = coll.search(Q, k=100).ids
    assert not np.isin(hits, gone).any(), "a removed id was found"
    own = coll.search(F[:200], k=1, rerank=100).ids[:, 0]
    res["added_found_first"] = float(np.mean(own >= n))  # the added images find themselves (ids past the base)
    if args.compact:
        coll.compact()
        w0 = written()
        t = time.perf_counter()
        coll.save(path)
        res["compact"] = {"save_s": time.perf_counter() - t, "written_bytes": written() - w0}
    res["total_s"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["load_average_1min_at_end"] = os.getloadavg()[0]
    res["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    out = root() / "results" / f"{args.index}-{args.store}-n{n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _mib(b: float) -> str:
    return f"{b / (1 << 20):,.1f} MiB" if b < (1 << 30) else f"{b / (1 << 30):,.2f} GiB"


def report(args) -> None:
    results = sorted(
        (json.loads(p.read_text()) for p in (root() / "results").glob("*.json")), key=lambda r: (r["index"], r["n"])
    )
    lines = [
        "# A collection at scale: entries database, add and remove of 10,000",
        "",
        "Printed by `.venv/bin/python benchmarks/scale_collection.py report` from the runs of",
        "`flock /tmp/hashsearch-bench.lock nice -n 10 .venv/bin/python benchmarks/scale_collection.py run --n N`",
        "(data and method: the script's docstring). N synthetic base entries (64-bit codes around real",
        "CIFAR-10 images' ITQ codes, pq-8 re-rank rows, records), then an add of the 10,000 CIFAR-10 (JPEG)",
        "test images through `add_images` (EfficientNet-Lite0, 128 px, cached features) and a remove of",
        "10,000 base ids, each followed by a save into the collection's folder. \"Written\" is the kernel's",
        'count of bytes written by the save (/proc/self/io); "generation" the bytes of the new generation\'s',
        'files, "shared" those hard-linked from the previous one.',
        "",
    ]
    if results:
        lines.append(f"Machine: {results[0]['machine']}.")
        lines.append("")
    head = "| | " + " | ".join(f"{r['index']}, N = {r['n']:,}" for r in results) + " |"
    lines += [head, "|---|" + "---:|" * len(results)]

    def row(name, f):
        vals = []
        for r in results:
            try:
                vals.append(f(r))
            except (KeyError, TypeError):
                vals.append("-")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")

    row("SQLite insert (rows/s, digest index included)", lambda r: f"{r['base']['sqlite_rows_per_s']:,.0f}")
    row(
        "SQLite insert / digest index (s)",
        lambda r: f"{r['base']['sqlite_insert_s']:.1f} / {r['base']['sqlite_digest_index_s']:.1f}",
    )
    row(
        "entries.sqlite size",
        lambda r: f"{_mib(r['base']['sqlite_bytes'])} ({r['base']['sqlite_bytes'] / r['n']:.0f} B/entry)",
    )
    row("base generation size", lambda r: _mib(sum(r["base"]["base_bytes"].values())))
    row("open (no checksums / all checksums), s", lambda r: f"{r['open_s']:.2f} / {r['open_verify_s']:.1f}")
    for when in ("before", "after"):
        tag = "base only" if when == "before" else "base + 2 deltas"
        row(
            f"entries lookup, 1 id, p50 / p99 ms ({tag})",
            lambda r, w=when: "{p50_ms:.3f} / {p99_ms:.3f}".format(**r[f"lookup_{w}"]["id"]),
        )
        row(
            f"entries lookup, 10 ids, p50 ms ({tag})",
            lambda r, w=when: "{p50_ms:.3f}".format(**r[f"lookup_{w}"]["ten_ids"]),
        )
        row(
            f"entries lookup, 1 digest, p50 ms ({tag})",
            lambda r, w=when: "{p50_ms:.3f}".format(**r[f"lookup_{w}"]["digest"]),
        )
        row(f"one query k=10, p50 ms ({tag})", lambda r, w=when: "{p50_ms:.2f}".format(**r[f"search_{w}"]["k10"]))
        row(
            f"one query rerank=100, p50 ms ({tag})",
            lambda r, w=when: "{p50_ms:.2f}".format(**r[f"search_{w}"]["rerank100"]),
        )
    row(
        "add 10,000 images: add_images s (of which features from cache)",
        lambda r: f"{r['add']['change_s']:.1f} ({r['add_features_s']:.1f})",
    )
    for what in ("add", "remove"):
        row(f"{what} 10,000: save s", lambda r, w=what: f"{r[w]['save_s']:.2f}")
        row(
            f"{what} 10,000: save wrote / generation / shared",
            lambda r, w=what: (
                f"{_mib(r[w]['written_bytes'])} / {_mib(r[w]['generation_bytes'])} / {_mib(r[w]['shared_bytes'])}"
            ),
        )
    row("remove 10,000: remove() s", lambda r: f"{r['remove']['change_s']:.2f}")
    row("open after (base + 2 deltas), s", lambda r: f"{r['open_after_s']:.2f}")
    row(
        "compaction on demand: save s / wrote",
        lambda r: f"{r['compact']['save_s']:.1f} / {_mib(r['compact']['written_bytes'])}",
    )
    row("run started (UTC)", lambda r: r["started"])
    row("whole run (s) / peak RSS", lambda r: f"{r['total_s']:.0f} / {_mib(r['peak_rss_bytes'])}")
    lines.append("")
    if results:
        lines += arithmetic(results, 10**9)
    lines.append(args.note or "")
    text = "\n".join(lines).rstrip() + "\n"
    Path(args.out).write_text(text)
    print(text)


def arithmetic(results: list[dict], n: int) -> list[str]:
    """What `n` entries would take, scaled linearly from the largest run (arithmetic, not measured).

    The compaction is scaled from the largest run that timed one (`run --compact`)."""
    r = max(results, key=lambda r: r["n"])
    x = n / r["n"]
    base = sum(r["base"]["base_bytes"].values())
    insert = n / r["base"]["sqlite_rows_per_s"]
    compacted = [c for c in results if "compact" in c]
    c = max(compacted, key=lambda c: c["n"]) if compacted else None
    compaction = (
        f"about {c['compact']['save_s'] * n / c['n'] / 60:,.0f} min and "
        f"{_mib(c['compact']['written_bytes'] * n / c['n'])} written (from the N = {c['n']:,} run)"
        if c
        else "not measured"
    )
    return [
        f"**{n:,} entries: arithmetic, not measured** (from the N = {r['n']:,} run, times x {x:g}: "
        "SQLite's inserts and the writes and checksums grow linearly at best; B-tree inserts slow down "
        "once the file outgrows the page cache, so the times are lower bounds):",
        "",
        f"- entries database: {_mib(r['base']['sqlite_bytes'] * x)}, inserted in about {insert / 60:,.0f} min "
        f"at {r['base']['sqlite_rows_per_s']:,.0f} rows/s; base generation {_mib(base * x)};",
        f"- open without checksums: constant (memory-mapped, headers only; {r['open_s']:.2f} s here); "
        f"open checking every sha256: about {r['open_verify_s'] * x / 60:,.0f} min;",
        f"- a save after adding or removing 10,000: the delta and the small files it compares, "
        f"{_mib(r['add']['written_bytes'])} / {_mib(r['remove']['written_bytes'])} written here, "
        "the same at any N (nothing of the base is written or read);",
        "- the compaction that merges it all (on demand, or when the deltas pass a quarter of the collection): "
        + compaction
        + ".",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--index", default="mih", choices=["flat", "mih"])
    r.add_argument("--store", default="pq-8")
    r.add_argument("--compact", action="store_true", help="also time a compaction on demand")
    r.add_argument("--keep", action="store_true", help="keep the collection under $HS_SCALE_COLL")
    q = sub.add_parser("report")
    q.add_argument("--out", default="benchmarks/results/scale-collection.md")
    q.add_argument("--note", default="", help="text appended below the table (e.g. how loaded the machine was)")
    args = p.parse_args()
    (run if args.cmd == "run" else report)(args)


if __name__ == "__main__":
    sys.exit(main())
