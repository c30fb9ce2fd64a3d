"""Search at 10^7 and 10^8 learned codes on one machine: build, open, memory, latency, throughput.

Data (synthetic, as benchmarks/search_scale.py): feature vectors of 1280 dimensions drawn
around 2,000 cluster centres (x = centre + 0.6 z, z standard normal), hashed by ITQ fitted on
20,000 such features. At 10^8 the 1280-d features themselves (256 GB as float16) are never
made. ITQ's bits are sign((x - mean) P) with P = components R (1280 x b); for
x = c + s z that is sign((c - mean) P + s z P), and z P is Gaussian with covariance P^T P. So
each database code is drawn directly in the b-dimensional projected space,
y = (c - mean) P + s L g with g ~ N(0, I_b) and L L^T = P^T P (Cholesky): the same
distribution of codes as hashing the 1280-d features, at b instead of 1280 random numbers a
code. The 20,000 training features and the 1,000 queries are real 1280-d draws hashed by
`hasher.encode`. Codes are generated in chunks of 2^20 and written to
$HS_SCALE_DIR (default /tmp/hs-scale), where later runs reuse them.

Every build and every search runs in a child process of its own, so its peak RSS
(VmHWM, which counts the memory-mapped file pages it touched) is that
of one job. The report is rebuilt from every measurement file under $HS_SCALE_DIR/results,
so 10^7 and 10^8 rows made by separate runs land in one table.

    flock /tmp/hashsearch-bench.lock nice -n 10 .venv/bin/python benchmarks/scale.py search \\
        --n 10000000 --bits 64 --backends flat mih --out benchmarks/results/scale.md
    .venv/bin/python benchmarks/scale.py report --out benchmarks/results/scale.md

`--n 200000` is a smoke run of a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 1280
N_CENTRES = 2000
NOISE = 0.6
N_TRAIN = 20_000
N_QUERIES = 1000
CHUNK = 1 << 20
KS = (1, 10, 100)
RADIUS = 2
N_CHECK = 200  # queries whose results are checked against flat's


def root() -> Path:
    return Path(os.environ.get("HS_SCALE_DIR", "/tmp/hs-scale"))


def rss_now() -> int:
    """Resident set size of this process now, bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_split() -> dict:
    """This process's resident memory now, bytes, split into anonymous (heap) and file-backed
    (memory-mapped files: page cache, shared and reclaimable) pages."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def peak_rss() -> int:
    """Peak resident set size of this process, bytes: VmHWM of /proc/self/status, the peak of its
    own address space. Not ru_maxrss: Linux carries that across fork and exec, so a child started
    by a parent that held 1.8 GB of generated codes reported 1.8 GB whatever it touched itself."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- data -------------------------------------------------------------------------------------
def model(bits: int):
    """The ITQ hasher (fitted on 20,000 real 1280-d features), the centres, and the query codes."""
    from hashsearch.hashing import create_hasher

    g = np.random.default_rng(0)
    centres = g.standard_normal((N_CENTRES, DIM), dtype=np.float32)
    lab = g.integers(0, N_CENTRES, N_TRAIN)
    train = centres[lab] + NOISE * g.standard_normal((N_TRAIN, DIM), dtype=np.float32)
    hasher = create_hasher("itq", n_bits=bits).fit(train)
    q_lab = g.integers(0, N_CENTRES, N_QUERIES)
    qfeats = centres[q_lab] + NOISE * g.standard_normal((N_QUERIES, DIM), dtype=np.float32)
    return hasher, centres, hasher.encode(qfeats)


def codes_path(n: int, bits: int) -> Path:
    return root() / f"codes-{bits}-{n}.npy"


def generate(n: int, bits: int, sampler: str = "normal") -> dict:
    """Write n database codes and the query codes under root(), unless there already.

    sampler "normal": y = (c - mean) P + s L g as the module says (b normal draws a code).
    sampler "bernoulli": P^T P is the identity (PCA directions times a rotation; checked to
    1e-4), so L = s I and the b bits of a code are independent given its centre, bit i set
    with probability Phi(((c - mean) P)_i / s); drawn as a uniform 16-bit integer below that
    probability x 65536 (clipped to 65535): the same distribution to within 2^-16 per bit,
    from 2 random bytes a bit instead of a normal draw (about 7x faster; used at 10^8).
    """
    path = codes_path(n, bits)
    qpath = root() / f"queries-{bits}.npy"
    info_path = path.with_suffix(".json")
    while path.with_suffix(".generating").exists():  # another process is writing these codes
        time.sleep(10)
    if path.exists() and qpath.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    root().mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hasher, centres, queries = model(bits)
    fit_s = time.perf_counter() - t0
    if not qpath.exists():  # the same queries for every N (a search may be reading the file)
        np.save(qpath, queries.data)
    P = hasher.projection_.astype(np.float64)
    cproj = ((centres - hasher.mean_).astype(np.float64) @ P).astype(np.float32)
    gram = P.T @ P
    L = (NOISE * np.linalg.cholesky(gram)).astype(np.float32)
    if sampler == "bernoulli":
        from scipy.special import ndtr

        err = float(np.abs(gram - np.eye(bits)).max())
        if err > 1e-4:
            raise SystemExit(f"P^T P differs from the identity by {err}; use --sampler normal")
        thresholds = np.minimum(np.round(ndtr(cproj.astype(np.float64) / NOISE) * 65536), 65535).astype(np.uint16)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, (bits + 7) // 8))
    t1 = time.perf_counter()
    for i, a in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - a)
        g = np.random.default_rng([1, bits, i])
        labels = g.integers(0, N_CENTRES, m)
        if sampler == "bernoulli":
            u = np.frombuffer(g.bytes(2 * m * bits), np.uint16).reshape(m, bits)
            out[a : a + m] = np.packbits(u < thresholds[labels], axis=1)
        else:
            y = g.standard_normal((m, bits), dtype=np.float32) @ L.T
            y += cproj[labels]
            out[a : a + m] = np.packbits(y > 0, axis=1)
    out.flush()
    del out
    os.replace(tmp, path)
    info = {"n": n, "bits": bits, "fit_s": fit_s, "generate_s": time.perf_counter() - t1, "sampler": sampler}
    info_path.write_text(json.dumps(info))
    return info


# -- child jobs -------------------------------------------------------------------------------
def index_dir(backend: str, n: int, bits: int) -> Path:
    return root() / f"index-{backend}-{bits}-{n}"


def backend_spec(label: str) -> tuple[str, dict]:
    """(create_index name, params) of a back-end label: "flat", "mih", or "mih-m3" (3 substrings)."""
    if label.startswith("mih-m"):
        return "mih", {"n_substrings": int(label[5:])}
    return label, {}


def job_build(backend: str, n: int, bits: int) -> dict:
    from hashsearch.index import create_index
    from hashsearch.types import Codes

    data = np.load(codes_path(n, bits), mmap_mode="r")
    t = time.perf_counter()
    name, params = backend_spec(backend)
    index = create_index(name, n_bits=bits, **params)
    index.add(Codes(data, bits))
    add_s = time.perf_counter() - t
    path = index_dir(backend, n, bits)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t = time.perf_counter()
    index.save(path)  # mih builds its tables here, straight into their files
    save_s = time.perf_counter() - t
    return {
        "build_s": add_s + save_s,
        "add_s": add_s,
        "save_s": save_s,
        "build_peak_rss": peak_rss(),
        "disk_bytes": dir_bytes(path),
    }


# Wall-clock times on a shared 2-core machine include waiting for a core; the CPU time of this
# process (every thread, time.process_time) does not, so both are kept.
_CPU: dict = {}


def _latency(fn, n: int) -> tuple[float, float]:
    """p50 and p99 wall-clock ms of fn(0) .. fn(n - 1); their CPU-time p50 / p99 go to _CPU["lat"]."""
    times, cpu = [], []
    for i in range(n):
        c = time.process_time()
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    _CPU["lat"] = (float(np.percentile(cpu, 50) * 1e3), float(np.percentile(cpu, 99) * 1e3))
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _best(fn, repeat: int) -> float:
    """Best wall-clock seconds of `repeat` calls; the CPU seconds of that call go to _CPU["best"]."""
    best = float("inf")
    for _ in range(repeat):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
        if wall < best:
            best, _CPU["best"] = wall, time.process_time() - c
    return best


def job_search(backend: str, n: int, bits: int, n_latency: int, n_batch: int = N_QUERIES) -> dict:
    from hashsearch.index.base import index_backends
    from hashsearch.types import Codes

    qdata = np.load(root() / f"queries-{bits}.npy")
    queries = Codes(qdata, bits)
    batch = queries[:n_batch]
    cls = index_backends.get(backend_spec(backend)[0])
    import hashsearch.index._kernels  # noqa: F401  (numba and the kernels: part of the baseline)

    rss0 = rss_now()
    t = time.perf_counter()
    index = cls.load(index_dir(backend, n, bits))
    open_s = time.perf_counter() - t
    rss_open = rss_now() - rss0
    t = time.perf_counter()
    first = index.search(queries[:1], 10)
    first_s = time.perf_counter() - t
    del first
    res: dict = {
        "open_s": open_s,
        "rss_baseline": rss0,
        "rss_after_open": rss_open,
        "first_query_s": first_s,
        "latency": {},
        "qps": {},
    }
    # Best of 2 (mih: 3, it is quick); one run for flat at 10^8 (minutes a run here).
    repeat = 3 if backend.startswith("mih") else 1 if n >= 50_000_000 else 2
    res["cpu_latency"], res["cpu_per_query_batched"] = {}, {}
    for k in KS:
        index.search(queries[:2], k)
        res["latency"][str(k)] = _latency(lambda i, k=k: index.search(queries[i : i + 1], k), n_latency)
        res["cpu_latency"][str(k)] = _CPU["lat"]
        res["qps"][str(k)] = len(batch) / _best(lambda k=k: index.search(batch, k), repeat)
        res["cpu_per_query_batched"][str(k)] = _CPU["best"] / len(batch) * 1e3
    res["latency"]["r2"] = _latency(lambda i: index.range_search(queries[i : i + 1], RADIUS), n_latency)
    res["cpu_latency"]["r2"] = _CPU["lat"]
    res["qps"]["r2"] = len(batch) / _best(lambda: index.range_search(batch, RADIUS), repeat)
    res["cpu_per_query_batched"]["r2"] = _CPU["best"] / len(batch) * 1e3
    res["n_latency"], res["n_batch"] = n_latency, len(batch)
    # Exactness: the first N_CHECK queries' results against flat's (saved by the flat job).
    sample = queries[:N_CHECK]
    got = {str(k): index.search(sample, k) for k in (10, 100)}
    rr = index.range_search(sample, RADIUS)
    truth = root() / "results" / f"truth-{bits}-{n}.npz"
    if backend == "flat":
        arrays = {}
        for k, r in got.items():
            arrays[f"d{k}"], arrays[f"i{k}"] = r.distances, r.ids
        arrays["rl"], arrays["rd"], arrays["ri"] = rr.lims, rr.distances, rr.ids
        np.savez(truth, **arrays)
        res["exact"] = "reference"
    elif truth.exists():
        t_ = np.load(truth)
        same = all(
            np.array_equal(t_[f"d{k}"], r.distances) and np.array_equal(t_[f"i{k}"], r.ids) for k, r in got.items()
        )
        same = same and all(
            np.array_equal(t_[a], b) for a, b in (("rl", rr.lims), ("rd", rr.distances), ("ri", rr.ids))
        )
        res["exact"] = "identical" if same else "DIFFERENT"
    else:
        res["exact"] = "not checked (no flat run)"
    res["mean_matches_r2"] = float(np.diff(rr.lims).mean())
    res["kth10_distance"] = float(got["10"].distances[:, -1].mean())
    res["search_peak_rss"] = peak_rss()
    res["rss_split_end"] = rss_split()
    return res


def job_open(backend: str, n: int, bits: int) -> dict:
    """Seconds to `load` the saved index (memory-mapped) in this fresh process."""
    from hashsearch.index.base import index_backends

    cls = index_backends.get(backend_spec(backend)[0])
    t = time.perf_counter()
    cls.load(index_dir(backend, n, bits))
    return {"open_s": time.perf_counter() - t}


def open_times(args) -> None:
    """Open each saved index in 5 fresh processes; keep the median."""
    for backend in args.backends:
        times = [run_child("open", backend, args.n, args.bits)["open_s"] for _ in range(5)]
        rec = {"backend": backend, "n": args.n, "bits": args.bits, "open_s": times, "when": time.strftime("%H:%M")}
        (root() / "results" / f"open-{backend}-{args.bits}-{args.n}.json").write_text(json.dumps(rec))
        print(f"  {backend}: open {sorted(times)} s", file=sys.stderr, flush=True)
    if args.out:
        write_report(args.out)


def open_section() -> list[str]:
    recs = [json.loads(p.read_text()) for p in sorted((root() / "results").glob("open-*.json"))]
    if not recs:
        return []
    lines = [
        "## Open time, header-only load",
        "",
        "Command: `python benchmarks/scale.py open --n N --bits B --backends flat mih`: `load` of the saved "
        "index in 5 fresh processes each (the files in the page cache, as after the runs above); ms, "
        "median and max. The index classes read only the headers and map the files; the full check of "
        "the ids waits for the first search, and mih's row numbers are checked as the kernels read them.",
        "",
        "| bits | back end | N | open ms, median | max |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in sorted(recs, key=lambda r: (r["bits"], r["n"], r["backend"])):
        t = sorted(r["open_s"])
        lines.append(f"| {r['bits']} | {r['backend']} | {r['n']:,} | {t[len(t) // 2] * 1e3:.1f} | {t[-1] * 1e3:.1f} |")
    return lines + [""]


def job_warmup(backend: str, bits: int) -> dict:
    """Search a small saved-and-loaded index of `backend`, so that numba compiles (and caches on
    disk) every kernel the measured search will call: the measured process then loads them
    from the cache, and its peak RSS is not that of the compiler (about 850 MiB)."""
    import tempfile

    from hashsearch.index import create_index
    from hashsearch.index.base import index_backends
    from hashsearch.types import Codes

    name, params = backend_spec(backend)
    data = np.load(codes_path(1 << 20, bits), mmap_mode="r") if codes_path(1 << 20, bits).exists() else None
    g = np.random.default_rng(0)
    raw = np.asarray(data[:300_000]) if data is not None else g.integers(0, 256, (300_000, bits // 8), np.uint8)
    queries = Codes(np.load(root() / f"queries-{bits}.npy"), bits)
    with tempfile.TemporaryDirectory(dir=root()) as tmp:
        index = create_index(name, n_bits=bits, **params)
        index.add(Codes(raw, bits))
        index.save(tmp)
        loaded = index_backends.get(name).load(tmp)
        for k in KS:
            loaded.search(queries[:1], k)
            loaded.search(queries[:64], k)
        loaded.range_search(queries[:1], RADIUS)
        loaded.range_search(queries[:64], RADIUS)
    return {"warmup_peak_rss": peak_rss()}


def child(args) -> None:
    """Run one job in this (child) process and print its measurements as JSON."""
    if args.job == "open":
        out = job_open(args.backend, args.n, args.bits)
    elif args.job == "warmup":
        out = job_warmup(args.backend, args.bits)
    elif args.job == "build":
        out = job_build(args.backend, args.n, args.bits)
    else:
        out = job_search(args.backend, args.n, args.bits, args.n_latency, args.n_batch)
    print(json.dumps(out))


def run_child(job: str, backend: str, n: int, bits: int, n_latency: int = 0, n_batch: int = N_QUERIES) -> dict:
    cmd = [sys.executable, __file__, "_child", job, backend, str(n), str(bits), str(n_latency), str(n_batch)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{job} {backend} n={n} bits={bits} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out[f"{job}_wall_s"] = time.perf_counter() - t
    return out


def measure(args) -> None:
    results = root() / "results"
    results.mkdir(parents=True, exist_ok=True)
    for bits in args.bits:
        for n in args.n:
            t = time.perf_counter()
            info = generate(n, bits, args.sampler)
            print(f"codes {bits} bits x {n:,}: {time.perf_counter() - t:.0f} s ({info})", file=sys.stderr, flush=True)
            n_lat = args.n_latency or (100 if n >= 50_000_000 else 200)
            for backend in args.backends:
                rec = {"backend": backend, "n": n, "bits": bits, "data": info, "when": time.strftime("%Y-%m-%d %H:%M")}
                if not args.no_build or not index_dir(backend, n, bits).exists():
                    rec.update(run_child("build", backend, n, bits))
                    print(f"  {backend}: built in {rec['build_s']:.1f} s", file=sys.stderr, flush=True)
                else:
                    old = results / f"{backend}-{bits}-{n}.json"
                    if not old.exists():
                        old = results / f"build-{backend}-{bits}-{n}.json"
                    if old.exists():
                        prev = json.loads(old.read_text())
                        rec.update(
                            {k: prev[k] for k in ("build_s", "save_s", "build_peak_rss", "disk_bytes") if k in prev}
                        )
                if args.build_only:
                    (results / f"build-{backend}-{bits}-{n}.json").write_text(json.dumps(rec, indent=1))
                    continue
                run_child("warmup", backend, n, bits)
                rec.update(run_child("search", backend, n, bits, n_lat, args.n_batch))
                print(f"  {backend}: searched in {rec['search_wall_s']:.0f} s", file=sys.stderr, flush=True)
                (results / f"{backend}-{bits}-{n}.json").write_text(json.dumps(rec, indent=1))
    if args.out:
        write_report(args.out)


# -- re-rank stores ---------------------------------------------------------------------------
RERANK_SPECS = ("full", "pca-256", "pca-128", "pca-64", "int8", "pq-64", "pq-32")


def rerank(args) -> None:
    """P@10 / P@100 of coarse-to-fine with each re-rank store on real CIFAR-10 features."""
    from hashsearch.backbones import create_backbone
    from hashsearch.data.protocols import cifar10_root, load_protocol
    from hashsearch.data.sources import open_source
    from hashsearch.experiments import split_features
    from hashsearch.hashing import create_hasher
    from hashsearch.index import create_index
    from hashsearch.index.coarse_to_fine import coarse_to_fine
    from hashsearch.index.rerank_store import create_rerank_store

    t0 = time.perf_counter()
    split = load_protocol("cifar10-1k")
    feats = split_features(open_source(cifar10_root()), split, create_backbone("efficientnet-lite0", input_size=128))
    Xd, yd = feats.database.features, feats.database.labels
    Xq, yq = feats.query.features, feats.query.labels
    rows = []
    coded = []
    for method, bits in (("itq", 64), ("dlbhc", 48)):
        hasher = create_hasher(method, n_bits=bits).fit(
            feats.train.features, feats.train.labels if create_hasher(method).supervised else None
        )
        index = create_index("flat", n_bits=bits)
        index.add(hasher.encode(Xd))
        coded.append((f"{method} {bits}", index, hasher.encode(Xq)))
    for spec in RERANK_SPECS:
        t = time.perf_counter()
        store = create_rerank_store(spec).fit(Xd)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        stored = store.encode(Xd)
        enc_s = time.perf_counter() - t
        qf = store.query(Xq)
        for name, index, qc in coded:
            if spec == RERANK_SPECS[0]:
                ham = index.search(qc, 100).ids
                rows.append(
                    (name, "none (Hamming ranking)", 0, 0.0, 0.0, _prec(ham, yq, yd, 10), _prec(ham, yq, yd, 100), 0.0)
                )
            t = time.perf_counter()
            res = coarse_to_fine(
                index, qc, qf, lambda ids: store.decode(stored[ids]), k=100, radius=2, n_candidates=200
            )
            ms = (time.perf_counter() - t) / len(yq) * 1e3
            rows.append(
                (
                    name,
                    spec,
                    store.bytes_per_vector,
                    fit_s,
                    enc_s,
                    _prec(res.ids, yq, yd, 10),
                    _prec(res.ids, yq, yd, 100),
                    ms,
                )
            )
            print(f"  {name} {spec}: P@10 {rows[-1][5]:.4f}", file=sys.stderr, flush=True)
        _write_rerank(rows, yd, yq, Xd, time.perf_counter() - t0)
    if args.out:
        write_report(args.out)


def _write_rerank(rows, yd, yq, Xd, total_s: float) -> None:
    """Kept after every store, so a run stopped part way keeps the rows it measured."""
    out = {"n_database": len(yd), "n_queries": len(yq), "dim": int(Xd.shape[1]), "rows": rows, "total_s": total_s}
    (root() / "results").mkdir(parents=True, exist_ok=True)
    (root() / "results" / "rerank.json").write_text(json.dumps(out, indent=1))


def _prec(ids: np.ndarray, yq: np.ndarray, yd: np.ndarray, k: int) -> float:
    return float((yd[ids[:, :k]] == yq[:, None]).mean())


def rerank_section() -> list[str]:
    path = root() / "results" / "rerank.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    lines = [
        "## Compact re-rank stores (coarse-to-fine on real CIFAR-10 features)",
        "",
        "Command: `python benchmarks/scale.py rerank --out benchmarks/results/scale.md` "
        f"({r['total_s']:.0f} s up to the last row; each store is fitted once, on the database features, and "
        f"serves both code types). cifar10-1k protocol (CIFAR-10 JPEG): {r['n_queries']:,} queries, "
        f"{r['n_database']:,}-image database, efficientnet-lite0 128 px features ({r['dim']}-d); "
        "coarse-to-fine as benchmarks/coarse_to_fine.py (candidates within radius 2, else the 200 nearest "
        "codes; re-ranked by Euclidean distance), with the candidates' features read from each store "
        "(`hashsearch.index.rerank_store`, fitted on the database features; pca-N compares queries "
        "projected alike). Bytes/image is what 10^8 images would need x 10^8.",
        "",
        "| codes | re-rank store | bytes / image | at 10^8 images | fit s | encode s | P@10 | P@100 | ms / query |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for codes, spec, b, fit_s, enc_s, p10, p100, ms in sorted(r["rows"], key=lambda row: row[0] != "itq 64"):
        size = f"{b * 1e8 / 1e9:,.1f} GB" if b else "-"
        lines.append(
            f"| {codes} | {spec} | {b:,} | {size} | {fit_s:.1f} | {enc_s:.1f} | {p10:.4f} | {p100:.4f} | {ms:.2f} |"
        )
    return lines + [""]


# -- entries database -------------------------------------------------------------------------
def entries(args) -> None:
    """The collection's entries database (SQLite, its schema) at N rows: insert, size, lookups,
    and the entries part of saving a generation after adding and removing 10,000 entries."""
    import sqlite3

    from hashsearch.collection import _SCHEMA
    from hashsearch.fileio import file_sha256

    n = args.n
    path = root() / f"entries-{n}.sqlite"
    res: dict = {"n": n}
    g = np.random.default_rng(0)

    def rows(a: int, b: int):
        # What `hashsearch index` stores: a root id, the key below the root, a label, a sha256 digest.
        for i in range(a, b):
            yield (i, 0, f"train/class{i % 10}/{i:09d}.jpg".encode(), b"cat", f"{i * 2654435761 % 2**64:064x}")

    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        t = time.perf_counter()
        db = sqlite3.connect(tmp)
        db.executescript(_SCHEMA)
        for a in range(0, n, 1_000_000):
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", rows(a, min(n, a + 1_000_000)))
        db.commit()
        db.close()
        res["insert_s"] = time.perf_counter() - t
        os.replace(tmp, path)
        (root() / "results" / f"entries-insert-{n}.json").write_text(json.dumps({"insert_s": res["insert_s"]}))
    else:
        res["insert_s"] = json.loads((root() / "results" / f"entries-insert-{n}.json").read_text())["insert_s"]
    res["bytes"] = path.stat().st_size
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ids = g.integers(0, n, 1000)
    times = []
    for i in ids.tolist():
        t = time.perf_counter()
        db.execute("SELECT root, key, label, digest FROM entries WHERE id = ?", (i,)).fetchone()
        times.append(time.perf_counter() - t)
    res["lookup_ms"] = (float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3))
    t = time.perf_counter()
    got = db.execute(f"SELECT id, key FROM entries WHERE id IN ({','.join('?' * 100)})", ids[:100].tolist()).fetchall()
    res["lookup_100_ms"] = (time.perf_counter() - t) * 1e3
    assert len(got) == len(set(ids[:100].tolist()))
    times = []
    for i in ids[:200].tolist():
        digest = f"{i * 2654435761 % 2**64:064x}"
        t = time.perf_counter()
        db.execute("SELECT id FROM entries WHERE digest = ?", (digest,)).fetchone()
        times.append(time.perf_counter() - t)
    res["digest_ms"] = (float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3))
    db.close()
    # A save after `add` of 10,000 and `remove` of 10,000: Collection._write_entries copies the
    # live database (sqlite3 backup), applies the changes, commits; then the manifest hashes it.
    new = root() / "entries-next.sqlite"
    new.unlink(missing_ok=True)
    t = time.perf_counter()
    dst = sqlite3.connect(new)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as src:
        src.backup(dst)
    res["save_copy_s"] = time.perf_counter() - t
    t = time.perf_counter()
    dst.executescript(_SCHEMA)
    dst.executemany("DELETE FROM entries WHERE id = ?", [(int(i),) for i in g.choice(n, 10_000, replace=False)])
    dst.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", rows(n, n + 10_000))
    dst.commit()
    dst.close()
    res["save_changes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    file_sha256(new)
    res["sha256_s"] = time.perf_counter() - t
    new.unlink()
    (root() / "results" / "entries.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    if args.out:
        write_report(args.out)


def entries_section() -> list[str]:
    path = root() / "results" / "entries.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    n = r["n"]
    scale = 1e8 / n
    return [
        f"## The entries database (SQLite) at {n:,} rows",
        "",
        f"Command: `python benchmarks/scale.py entries --n {n} --out benchmarks/results/scale.md`. The schema of "
        "`hashsearch.collection` (id, root, key, label, digest; an index on digest); rows like those "
        "`hashsearch index` writes (a 26-byte key, a label, a 64-hex digest), inserted with executemany, one "
        "transaction. 10^8 column: this run's figure x 10^8 / N (SQLite's B-tree costs grow by log N, so "
        "lookups at 10^8 take about one more page read than here; that column is arithmetic, not a measurement).",
        "",
        f"| measure | {n:,} rows | 10^8 rows (arithmetic) |",
        "|---|---:|---:|",
        f"| insert | {r['insert_s']:.0f} s ({n / r['insert_s']:,.0f} rows/s) | {r['insert_s'] * scale / 60:.0f} min |",
        f"| file size | {r['bytes'] / 2**20:,.0f} MiB ({r['bytes'] / n:.0f} bytes/row) | {r['bytes'] * scale / 1e9:.1f} GB |",
        f"| lookup by id, one per call, p50 / p99 | {r['lookup_ms'][0]:.3f} / {r['lookup_ms'][1]:.3f} ms | about the same |",
        f"| lookup of 100 ids in one query | {r['lookup_100_ms']:.2f} ms | about the same |",
        f"| lookup by digest, p50 / p99 | {r['digest_ms'][0]:.3f} / {r['digest_ms'][1]:.3f} ms | about the same |",
        f"| save: copy the live database into the new generation | {r['save_copy_s']:.1f} s | {r['save_copy_s'] * scale:.0f} s |",
        f"| save: delete 10,000 rows, insert 10,000, commit | {r['save_changes_s']:.1f} s | about the same |",
        f"| save: sha256 of the new file for the manifest | {r['sha256_s']:.1f} s | {r['sha256_s'] * scale:.0f} s |",
        "",
    ]


# -- report -----------------------------------------------------------------------------------
def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def index_table(recs: list[dict]) -> list[str]:
    lines = [
        "| bits | back end | N | build s | build peak RSS MiB | disk MiB | bytes/entry | open ms | first query ms "
        "| search peak RSS MiB | of it, before open MiB | at end: heap / mapped files MiB | peak RSS / (codes+ids) | exact vs flat |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        base = r["n"] * ((r["bits"] + 7) // 8 + 8)
        sp = r.get("rss_split_end", {})
        split = f"{_mib(sp['RssAnon'])} / {_mib(sp['RssFile'])}" if sp else "-"
        lines.append(
            f"| {r['bits']} | {r['backend']} | {r['n']:,} | {r.get('build_s', float('nan')):.1f} | "
            f"{_mib(r.get('build_peak_rss', float('nan')))} | {_mib(r['disk_bytes'])} | {r['disk_bytes'] / r['n']:.1f} | "
            f"{r['open_s'] * 1e3:.1f} | {r['first_query_s'] * 1e3:.1f} | {_mib(r['search_peak_rss'])} | "
            f"{_mib(r.get('rss_baseline', float('nan')))} | {split} | {r['search_peak_rss'] / base:.2f} | {r['exact']} |"
        )
    return lines


def _k_columns() -> tuple[list[str], list[str]]:
    """The k = 1, 10, 100 and radius columns' keys, and a table's two header lines (each column twice)."""
    keys = [str(k) for k in KS] + ["r2"]
    head = " | ".join(f"k={k}" if k != "r2" else f"radius {RADIUS}" for k in keys)
    return keys, [f"| bits | back end | N | {head} | {head} |", "|---:|---|---:|" + "---:|" * (2 * len(keys))]


def speed_table(recs: list[dict]) -> list[str]:
    keys, lines = _k_columns()
    for r in recs:
        lat = " | ".join(f"{r['latency'][k][0]:.3f} / {r['latency'][k][1]:.3f}" for k in keys)
        qps = " | ".join(f"{r['qps'][k]:,.0f}" for k in keys)
        note = f" (n_lat {r['n_latency']}, n_batch {r['n_batch']})" if r.get("n_batch", N_QUERIES) != N_QUERIES else ""
        lines.append(f"| {r['bits']} | {r['backend']}{note} | {r['n']:,} | {lat} | {qps} |")
    return lines


def cpu_table(recs: list[dict]) -> list[str]:
    keys, lines = _k_columns()
    for r in recs:
        if "cpu_latency" not in r:
            continue
        lat = " | ".join(f"{r['cpu_latency'][k][0]:.3f} / {r['cpu_latency'][k][1]:.3f}" for k in keys)
        per = " | ".join(f"{r['cpu_per_query_batched'][k]:.4f}" for k in keys)
        lines.append(f"| {r['bits']} | {r['backend']} | {r['n']:,} | {lat} | {per} |")
    return lines


def goals(recs: list[dict]) -> list[str]:
    by = {(r["backend"], r["bits"], r["n"]): r for r in recs}
    lines = [
        "| bits | N | mih / flat throughput, k=10, wall-clock (goal >= 100x) | the same in CPU per query | flat search RSS / (codes+ids) | mih search RSS / (codes+ids) (goal <= 3) | flat open ms | mih open ms (goal < 1000) | mih exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (backend, bits, n), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][2])):
        if not backend.startswith("mih") or ("flat", bits, n) not in by:
            continue
        f = by[("flat", bits, n)]
        base = n * ((bits + 7) // 8 + 8)
        cpu_ratio = "-"
        if "cpu_per_query_batched" in r and "cpu_per_query_batched" in f:
            cpu_ratio = f"{f['cpu_per_query_batched']['10'] / r['cpu_per_query_batched']['10']:.1f}x"
        lines.append(
            f"| {bits} | {n:,} | {backend}: {r['qps']['10'] / f['qps']['10']:.1f}x | {cpu_ratio} | {f['search_peak_rss'] / base:.2f} | "
            f"{r['search_peak_rss'] / base:.2f} | {f['open_s'] * 1e3:.0f} | {r['open_s'] * 1e3:.0f} | {r['exact']} |"
        )
    lines += [
        "",
        "Where mih's memory goal is missed, why: its files (codes, ids and the tables) against codes+ids, "
        "and the share of them the searches touched:",
        "",
    ]
    for (backend, bits, n), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][2])):
        base = n * ((bits + 7) // 8 + 8)
        if backend.startswith("mih") and r["search_peak_rss"] > 3 * base:
            lines.append(
                f"- {bits} bits, N = {n:,}: {r['search_peak_rss'] / base:.2f}x, over by "
                f"{r['search_peak_rss'] / (3 * base) - 1:.0%}; the index files are {r['disk_bytes'] / base:.1f}x "
                f"codes+ids ({r['disk_bytes'] / n:.0f} B an entry) and the {N_QUERIES:,} queries' k=1/10/100 and "
                f"radius searches touched {r['search_peak_rss'] / r['disk_bytes']:.0%} of them."
            )
    lines += [
        "",
        "The tables keep, beside each table's row numbers (4 bytes an entry a table), that table's copy of "
        "the code words (8 bytes a word), so that candidates are verified by reading the table in order "
        "rather than the codes at random. At 10^8 the same searches touch a small share of the files and "
        "the goal holds. What would meet it at every N: tables of row numbers only (m x 4 bytes an entry: "
        "16 at 64 bits, 32 at 128, under 3x codes+ids with the codes) at the cost of random reads of the "
        "codes when verifying; not done.",
    ]
    return lines


def write_report(out: Path) -> None:
    from hashsearch.index._scan import default_threads

    recs = []
    for p in sorted((root() / "results").glob("*.json")):
        r = json.loads(p.read_text())
        if "backend" in r and "qps" in r:
            recs.append(r)
    recs.sort(key=lambda r: (r["bits"], r["n"], r["backend"]))
    gens = {}
    for r in recs:
        gens[(r["bits"], r["n"])] = r["data"]
    lines = [
        "# A hundred million codes on one machine",
        "",
        "Commands (each run adds its rows; the report is rebuilt from every measurement kept under "
        "/tmp/hs-scale/results):",
        "",
        "    flock /tmp/hashsearch-bench.lock nice -n 10 .venv/bin/python benchmarks/scale.py search --n N --bits B \\",
        "        --backends flat mih --out benchmarks/results/scale.md",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({default_threads()} used by every search), "
        f"{_mem_total()} GiB memory shared with other engineers' jobs, CPython {platform.python_version()}, no GPU. "
        "Times are wall-clock under `nice -n 10` (the runs of 2026-12-01: `nice -n 19`); other engineers' "
        "tests ran on the same 2 cores, so times are upper bounds.",
        "",
        "Data: synthetic learned codes (ITQ), see the docstring of benchmarks/scale.py: database codes drawn "
        "directly in ITQ's projected space, which gives the same distribution of codes as hashing 1280-d "
        f"features x = centre + {NOISE} z around {N_CENTRES:,} centres; {N_QUERIES:,} queries hashed from real "
        "1280-d draws. Generation, per code set:",
        "",
        "| bits | N | sampler | ITQ fit + queries s | code generation s |",
        "|---:|---:|---|---:|---:|",
    ]
    for (bits, n), d in sorted(gens.items()):
        lines.append(f"| {bits} | {n:,} | {d.get('sampler', 'normal')} | {d['fit_s']:.0f} | {d['generate_s']:.0f} |")
    lines += [
        "",
        "## Build, disk, open, memory",
        "",
        "Build: `add` of the memory-mapped codes plus `save` (which builds mih's tables straight into their "
        "files), in a child process (its peak RSS, memory-mapped pages included). "
        "Open: `load` (memory-mapped). First query: one k=10 query right after open (page faults, kernel "
        "compilation cache load). Search peak RSS: the peak RSS (VmHWM) of the child process that opens the "
        "index and runs every search below (memory-mapped pages it touched count; the 10^8 rows were "
        "measured as ru_maxrss, which Linux carries over from the process that started the child, so they "
        "are upper bounds; the 10^7 64-bit rows, measured both ways, gave the same peaks). codes+ids = N x (bytes per code + 8). "
        f"Exact: k=10, k=100 and radius {RADIUS} results of the first {N_CHECK} queries compared with flat's, "
        "distances and ids.",
        "",
        *index_table(recs),
        "",
        "## Latency and throughput",
        "",
        "Left half: one query per call, p50 / p99 in ms (the first n_lat queries). Right half: queries/s "
        "with the first n_batch queries in one call (best of 2; 1 at 10^8). n_lat / n_batch: 200 / 1,000 "
        "unless the row says otherwise.",
        "",
        *speed_table(recs),
        "",
        "The same searches in CPU time of the search process (all its threads; time.process_time), which "
        "does not count waiting for a core while other jobs ran. Left: one query per call, p50 / p99 CPU ms; "
        "right: CPU ms per query with all queries in one call. On an idle machine, wall-clock throughput "
        "is about (cores used) / (CPU per query). Rows without it were measured before it was added.",
        "",
        *cpu_table(recs),
        "",
        "## Goals",
        "",
        *goals(recs),
        "",
        *open_section(),
        *rerank_section(),
        *entries_section(),
    ]
    extra = root() / "results" / "notes.md"
    if extra.exists():
        lines += [extra.read_text()]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20)
    return 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        ns = argparse.Namespace(
            job=sys.argv[2],
            backend=sys.argv[3],
            n=int(sys.argv[4]),
            bits=int(sys.argv[5]),
            n_latency=int(sys.argv[6]),
            n_batch=int(sys.argv[7]) if len(sys.argv) > 7 else N_QUERIES,
        )
        child(ns)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search", help="generate codes (if needed), build and measure flat / mih")
    s.add_argument("--n", type=int, nargs="+", default=[10_000_000])
    s.add_argument("--bits", type=int, nargs="+", default=[64])
    s.add_argument("--backends", nargs="+", default=["flat", "mih"])
    s.add_argument("--n-latency", type=int, default=0, help="queries timed one by one (default 200; 100 at 10^8)")
    s.add_argument(
        "--sampler", choices=["normal", "bernoulli"], default="normal", help="how codes are drawn (see generate)"
    )
    s.add_argument("--n-batch", type=int, default=N_QUERIES, help="queries in the one-call throughput runs")
    s.add_argument("--build-only", action="store_true", help="build and save the indexes, measure no search")
    s.add_argument("--no-build", action="store_true", help="reuse an index built by an earlier run")
    s.add_argument("--out", type=Path)
    rr = sub.add_parser("rerank", help="P@10 of coarse-to-fine with each re-rank store (CIFAR-10)")
    rr.add_argument("--out", type=Path)
    e = sub.add_parser("entries", help="the entries database (SQLite) at N rows")
    e.add_argument("--n", type=int, default=10_000_000)
    e.add_argument("--out", type=Path)
    o = sub.add_parser("open", help="time `load` of the saved indexes in fresh processes")
    o.add_argument("--n", type=int, default=10_000_000)
    o.add_argument("--bits", type=int, default=64)
    o.add_argument("--backends", nargs="+", default=["flat", "mih"])
    o.add_argument("--out", type=Path)
    r = sub.add_parser("report", help="rebuild the markdown from the kept measurements")
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "search":
        measure(args)
    elif args.cmd == "rerank":
        rerank(args)
    elif args.cmd == "open":
        open_times(args)
    elif args.cmd == "entries":
        entries(args)
    else:
        write_report(args.out)


if __name__ == "__main__":
    main()
