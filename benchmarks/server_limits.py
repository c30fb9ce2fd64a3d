"""What a hostile client can cost `hashsearch serve`: peak memory under concurrent worst-case uploads,
and the bytes the server reads of an unauthenticated upload before refusing it.

    flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/server_limits.py

1. Memory. `hashsearch serve` (the CLI, in its own process) over a 1,000-image CIFAR-10 collection.
   The worst query a client may send: a PNG just under the query pixel limit (6500 x 6100 =
   39.65 megapixels, a 130 kB file that decodes to 160 MB), sent by N concurrent clients at once.
   For each number of decode slots (1, the default 2, and 8, which for 8 clients is no bound at
   all) the server starts afresh; the table gives its resident memory at rest (after a
   warm-up search) and its peak (VmHWM from /proc) after N = 1, 8 and 32 concurrent uploads,
   with how many were answered 200 and how many 503 (beyond decode_slots + max_queued).
2. Unauthenticated bytes. uvicorn in this process, its protocol counting the bytes it reads from
   the socket; a client streams a 1 GiB chunked multipart body (no length) without the API key,
   20 times per route; the table gives what the server read (min / median / max) and what the
   client managed to hand to its socket before it was cut off (the rest of which sat in kernel
   buffers, never read). Then the same with a key and a file over the per-file limit.

Writes benchmarks/results/server-limits.md.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

KEY = "bench-key"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(path: Path, work: Path, n: int) -> None:
    """A collection of the first `n` CIFAR-10 test images (EfficientNet-Lite0 128 px, ITQ 64 bits)."""
    from hashsearch.backbones import create_backbone
    from hashsearch.data.protocols import cifar10_root
    from hashsearch.data.sources import FolderSource
    from hashsearch.hashing import create_hasher
    from hashsearch.pipeline.build import build_collection

    source = FolderSource(cifar10_root() / "test")
    records = sorted(source.records(), key=lambda r: r.key)[:n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            source,
            create_backbone("efficientnet-lite0", input_size=128),
            create_hasher("itq", n_bits=64, seed=0),
            records=records,
            cache_dir=work / "features",
            progress=False,
        )
    coll.save(path)


def worst_png(w: int, h: int) -> bytes:
    """A real PNG of w x h pixels that compresses to little: one colour and a band of noise."""
    im = Image.new("RGB", (w, h), (90, 140, 200))
    im.paste(Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, w, 3), np.uint8)), (0, h // 2))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def memory_rows(path: Path, work: Path, png: bytes, slots: int, counts: list[int]) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-c",
        "from hashsearch.cli import main; main()",
        "serve",
        str(path),
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--cache-dir",
        str(work / "cache"),
        "--decode-slots",
        str(slots),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=300) as c:
            for _ in range(600):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise SystemExit("server did not start")
            small = io.BytesIO()
            Image.new("RGB", (64, 64), (10, 200, 30)).save(small, "JPEG")
            assert c.post("/search", files={"image": ("w.jpg", small.getvalue(), "image/jpeg")}).status_code == 200
            rest = status_kib(server.pid, "VmRSS")
        for n in counts:
            codes, lat = [], []
            lock = threading.Lock()

            def one():
                t = time.perf_counter()
                with httpx.Client(timeout=600) as c:
                    r = c.post(url + "/search", files={"image": ("worst.png", png, "image/png")})
                with lock:
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)

            threads = [threading.Thread(target=one) for _ in range(n)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rows.append(
                {
                    "slots": slots,
                    "n": n,
                    "rest": rest,
                    "peak": status_kib(server.pid, "VmHWM"),
                    "ok": codes.count(200),
                    "busy": codes.count(503),
                    "other": len(codes) - codes.count(200) - codes.count(503),
                    "wall": time.perf_counter() - t,
                    "max_s": max(lat) if lat else float("nan"),
                }
            )
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return rows


def unauthenticated_rows(path: Path, work: Path, trials: int) -> list[dict]:
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from hashsearch.service import create_app

    read = [0]

    class Counting(H11Protocol):
        def data_received(self, data: bytes) -> None:
            read[0] += len(data)
            super().data_received(data)

    copy = work / "unauth.hsx"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(path, copy)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(copy, api_key=KEY, cache_dir=work / "cache2"),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            http=Counting,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    head = (
        b'--bnd\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
    )
    cases = [
        ("POST /images, no key, chunked", "POST", "/images", {}, None),
        ("POST /images, wrong key, chunked", "POST", "/images", {"X-API-Key": "wrong"}, None),
        ("DELETE /images/3, no key, chunked", "DELETE", "/images/3", {}, None),
        ("POST /images, no key, Content-Length 1 GiB", "POST", "/images", {}, 1024 * MIB),
        (
            "POST /images, with the key, one 1 GiB file (per-file limit 20 MiB)",
            "POST",
            "/images",
            {"X-API-Key": KEY},
            None,
        ),
    ]
    rows = []
    try:
        for name, method, route, headers, length in cases:
            reads, sents, codes = [], [], set()
            for _ in range(trials if "with the key" not in name else 3):
                sent = [0]

                def body():
                    yield head
                    sent[0] += len(head)
                    block = b"\0" * (64 * 1024)
                    while sent[0] < 1024 * MIB:
                        yield block
                        sent[0] += len(block)

                hdrs = {"Content-Type": "multipart/form-data; boundary=bnd", **headers}
                if length:
                    hdrs["Content-Length"] = str(length)
                read[0] = 0
                r = httpx.request(method, f"http://127.0.0.1:{port}{route}", content=body(), headers=hdrs, timeout=120)
                time.sleep(0.2)
                reads.append(read[0])
                sents.append(sent[0])
                codes.add(r.status_code)
            rows.append({"case": name, "codes": sorted(codes), "read": reads, "sent": sents})
            print(name, sorted(codes), max(reads), flush=True)
    finally:
        server.should_exit = True
        thread.join(10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="collection size")
    ap.add_argument("--size", default="6500x6100", help="the worst-case PNG's width x height")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hashsearch-server-limits")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "server-limits.md")
    args = ap.parse_args()

    from hashsearch.evaluation.report import machine_description
    from hashsearch.service.limits import Limits

    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "c.hsx"
    if not path.exists():
        build(path, args.work, args.images)
    w, h = (int(x) for x in args.size.split("x"))
    png = worst_png(w, h)
    lim = Limits()
    assert w * h <= lim.max_query_pixels, "the worst case is an image the server accepts"

    mem = []
    for slots in (1, 2, 8):
        mem += memory_rows(path, args.work, png, slots, [1, 8, 32])
    unauth = unauthenticated_rows(path, args.work, args.trials)

    lines = [
        "# What a client can cost `hashsearch serve`",
        "",
        "Command: `flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/server_limits.py`"
        f" (--images {args.images} --size {args.size} --trials {args.trials})",
        "",
        f"Machine: {machine_description()}; server and clients on the same machine, which is shared with other work.",
        "",
        "## Peak memory under concurrent worst-case uploads",
        "",
        f"Each client sends POST /search with a {w} x {h} PNG ({w * h / 1e6:.2f} megapixels, {len(png) / 1024:.0f} kB; "
        f"the query limit is {lim.max_query_pixels / 1e6:g} megapixels), all at once. `hashsearch serve` over a "
        f"{args.images}-image collection, defaults but --decode-slots (max_queued {lim.max_queued}: at most "
        "decode_slots + 8 uploads admitted, the others answered 503 with Retry-After before their body is read). "
        "Resident memory of the server process: at rest after a warm-up search, and its peak (VmHWM) after the "
        "N uploads (cumulative over the rows of one server).",
        "",
        "| decode slots | N concurrent | at rest MiB | peak MiB | peak - rest MiB | 200 | 503 | other | wall s | slowest 200 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in mem:
        lines.append(
            f"| {r['slots']} | {r['n']} | {r['rest'] / 1024:.0f} | {r['peak'] / 1024:.0f} | "
            f"{(r['peak'] - r['rest']) / 1024:.0f} | {r['ok']} | {r['busy']} | {r['other']} | "
            f"{r['wall']:.1f} | {r['max_s']:.1f} |"
        )
    per_slot = [(r["slots"], (r["peak"] - r["rest"]) / 1024 / r["slots"]) for r in mem if r["n"] == 32]
    lines += [
        "",
        "Peak growth per decode slot at N = 32: "
        + ", ".join(f"{x:.0f} MiB ({k} slots)" for k, x in per_slot)
        + "; per decoded pixel of the worst case: "
        + ", ".join(f"{x * MIB / (w * h):.1f} bytes ({k} slots)" for k, x in per_slot)
        + ".",
        "",
        "## Bytes read of an upload before refusing it",
        "",
        f"A client streams a 1 GiB multipart body, 64 KiB chunks, as fast as loopback takes it ({args.trials} "
        "trials; 3 for the last row). *read*: bytes uvicorn took from the socket (its protocol counts them); none "
        "reaches the app or a temporary file before the key check. *handed to the socket*: what the client "
        "wrote before the server closed the connection (the difference stayed in kernel buffers).",
        "",
        "| request | answer | read min | read median | read max | handed to the socket, max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in unauth:
        rd = r["read"]
        lines.append(
            f"| {r['case']} | {', '.join(map(str, r['codes']))} | {min(rd):,} | {int(statistics.median(rd)):,} | "
            f"{max(rd):,} | {max(r['sent']):,} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
