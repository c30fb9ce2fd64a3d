"""The first search after `hashsearch serve` starts, with and without the warm-up (issue 22 part 4).

Each trial starts a fresh Python process that serves COLLECTION with uvicorn on a loopback port
(what `hashsearch serve` runs), waits until uvicorn reports itself started, then sends the same
query image to POST /search five times and prints the time to ready and each search's latency as
the client saw it (and the server's own `took_ms`). `--no-warm` replaces `ServiceState.warm` by a
no-op: the server as it was before the warm-up, for comparison.

    python benchmarks/first_search.py [COLLECTION] [--query FILE] [--trials 3] [--no-warm]

COLLECTION defaults to the one `make demo` writes (9,800 CIFAR-10 images); the query defaults to
the first image of the collection's own records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, socket, sys, tempfile, threading, time
t0 = time.perf_counter()
import httpx, uvicorn
from hashsearch.service import create_app
from hashsearch.service.state import ServiceState
path, query, warm = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if not warm:
    ServiceState.warm = lambda self: 0.0
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
app = create_app(path, cache_dir=tempfile.mkdtemp())
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.005)
ready = time.perf_counter() - t0
data = open(query, "rb").read()
out = {"ready_s": ready, "client_ms": [], "took_ms": []}
with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
    for _ in range(5):
        t = time.perf_counter()
        r = c.post("/search", params={"k": 12}, files={"image": ("q.jpg", data, "image/jpeg")})
        r.raise_for_status()
        out["client_ms"].append(1000 * (time.perf_counter() - t))
        out["took_ms"].append(r.json()["took_ms"])
server.should_exit = True
print(json.dumps(out))
"""


def _default_collection() -> str:
    from hashsearch.paths import cache_dir

    return str(cache_dir() / "demo.hsx")


def _first_image(collection: str) -> str:
    from hashsearch.collection import Collection

    coll = Collection.open(collection)
    for i in range(1000):
        e = coll.entries([i])[0]
        if e is not None and "::" not in e["path"]:
            return e["path"]
    sys.exit(f"{collection}: no image file among its first 1,000 ids; give one with --query FILE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("collection", nargs="?", default=None, help="a collection (*.hsx); default: make demo's")
    ap.add_argument("--query", help="query image file (default: the collection's first image)")
    ap.add_argument("--trials", type=int, default=3, help="fresh server processes (default 3)")
    ap.add_argument("--no-warm", action="store_true", help="serve without the warm-up (as before it)")
    a = ap.parse_args()
    collection = a.collection or _default_collection()
    query = a.query or _first_image(collection)
    runs = []
    for _ in range(a.trials):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, collection, query, "0" if a.no_warm else "1"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"the server process failed:\n{proc.stderr.strip().splitlines()[-1]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"collection {collection}, warm-up {'off' if a.no_warm else 'on'}, {a.trials} fresh server processes")
    print("| trial | ready (s) | 1st search (ms) | 2nd-5th searches, median (ms) | server took_ms, 1st |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        rest = statistics.median(r["client_ms"][1:])
        print(f"| {i} | {r['ready_s']:.2f} | {r['client_ms'][0]:.1f} | {rest:.1f} | {r['took_ms'][0]:.1f} |")


if __name__ == "__main__":
    main()
