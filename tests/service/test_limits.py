"""What a client can make the server read, store, decode and hold (issue 18, items 11 and 12).

A real uvicorn server on loopback whose protocol counts the bytes it reads from its sockets, and
httpx streaming generator bodies (chunked, no length), as a hostile client would.
"""

from __future__ import annotations

import io
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.service import create_app
from hashsearch.service.limits import Limits

from .conftest import API_KEY, Server, counting_h11, fresh_jpegs

KEY = {"X-API-Key": API_KEY}
KIB, MIB = 1024, 1024 * 1024
#: What uvicorn may have read when the guard answers without reading the body: its read-ahead
#: (flow control pauses past 64 KiB of unread body) plus one socket read (asyncio reads up to
#: 256 KiB at a time) plus the headers. Measured: about 96 KiB (benchmarks/results/server-limits.md).
READ_AHEAD = 64 * KIB + 256 * KIB + 16 * KIB


def _form_head(name="images", filename="x.png"):
    return (
        f'--bnd\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


def _stream(total: int, sent: list, head: bytes = b"", chunk: int = 64 * KIB, delay: float = 0.0):
    """A generator body: `head`, then zeros up to `total` bytes; counts what it gave in sent[0]."""

    def gen():
        yield head
        sent[0] += len(head)
        block = b"\0" * chunk
        while sent[0] < total:
            if delay:
                time.sleep(delay)
            yield block
            sent[0] += len(block)

    return gen()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=bnd"}


@pytest.fixture(scope="module")
def counted(served_collection, tmp_path_factory):
    """A server with small limits (1 MiB per file, 3 MiB per request) whose socket reads are counted."""
    path = tmp_path_factory.mktemp("lim") / "c.hsx"
    shutil.copytree(served_collection, path)
    app = create_app(
        path,
        api_key=API_KEY,
        cache_dir=tmp_path_factory.mktemp("limc"),
        max_upload_bytes=1 * MIB,
        max_request_bytes=3 * MIB,
    )
    proto = counting_h11()
    with Server(app, http=proto) as s:
        s.read = proto.read
        yield s


def _send(server, method, route, body, headers):
    server.read[0] = 0
    r = httpx.request(method, server.url + route, content=body, headers=headers, timeout=60)
    time.sleep(0.2)  # let the server's last reads land in the count
    return r, server.read[0]


@pytest.mark.parametrize(
    "method,route,headers",
    [
        ("POST", "/images", {}),
        ("POST", "/images", {"X-API-Key": "wrong"}),
        ("DELETE", "/images/3", {}),
    ],
)
def test_without_the_key_a_gigabyte_stream_is_refused_after_a_few_kilobytes(counted, method, route, headers):
    sent = [0]
    r, read = _send(counted, method, route, _stream(1024 * MIB, sent, _form_head()), {**MULTIPART, **headers})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    assert read < READ_AHEAD, f"the server read {read:,} bytes of an unauthenticated body"
    assert sent[0] < 64 * MIB  # the client was cut off (what it sent beyond `read` sat in kernel buffers)
    assert httpx.get(counted.url + "/stats").json()["count"] == 120


def test_without_the_key_a_declared_length_is_refused_before_reading(counted):
    sent = [0]
    r, read = _send(
        counted,
        "POST",
        "/images",
        _stream(200 * MIB, sent, _form_head()),
        {**MULTIPART, "Content-Length": str(200 * MIB)},
    )
    assert r.status_code == 401 and read < READ_AHEAD


def test_mutations_disabled_refuse_before_reading(served_collection, tmp_path):
    proto = counting_h11()
    with Server(create_app(served_collection, cache_dir=tmp_path), http=proto) as s:
        s.read = proto.read
        r, read = _send(s, "POST", "/images", _stream(256 * MIB, [0], _form_head()), {**MULTIPART, **KEY})
    assert r.status_code == 403 and read < READ_AHEAD


def test_one_file_over_the_per_file_limit_is_cut_on_the_stream(counted):
    sent = [0]
    r, read = _send(
        counted, "POST", "/images", _stream(512 * MIB, sent, _form_head(filename="huge.png")), {**MULTIPART, **KEY}
    )
    assert r.status_code == 413, r.text
    assert r.json()["detail"].startswith("file 'huge.png' is over the per-file limit of 1,048,576 bytes")
    assert 1 * MIB < read < 1 * MIB + READ_AHEAD


def test_files_under_the_limit_but_over_the_request_limit_are_cut(counted):
    part = _form_head() + b"\0" * (900 * KIB) + b"\r\n"
    body = part * 3 + b"--bnd--\r\n"  # 2.7 MiB: within 3 MiB
    r = httpx.post(counted.url + "/images", content=iter([body]), headers={**MULTIPART, **KEY}, timeout=60)
    assert r.status_code == 200 and len(r.json()["errors"]) == 3  # not images, but read and answered
    sent = [0]
    r, read = _send(counted, "POST", "/images", _stream(64 * MIB, sent, part * 5), {**MULTIPART, **KEY})
    assert r.status_code == 413 and "over the limit of" in r.json()["detail"]
    assert read < counted.app.state.hs.limits.body_limit(256) + READ_AHEAD


def test_a_search_body_holds_one_file(counted):
    sent = [0]
    r, read = _send(counted, "POST", "/search", _stream(256 * MIB, sent, _form_head("image")), MULTIPART)
    assert r.status_code == 413
    assert read < counted.app.state.hs.limits.body_limit(1) + READ_AHEAD
    two = (_form_head("image", "a.png") + b"\0" * 10 + b"\r\n") * 2 + b"--bnd--\r\n"
    r = httpx.post(counted.url + "/search", content=two, headers=MULTIPART)
    assert r.status_code == 413 and "more than 1 files" in r.json()["detail"]


def test_a_route_that_reads_no_body_does_not_read_a_streamed_one(counted):
    for method, route in [("POST", "/health"), ("GET", "/stats"), ("POST", "/nowhere")]:
        r, read = _send(counted, method, route, _stream(512 * MIB, [0]), {"Content-Type": "application/octet-stream"})
        assert r.status_code in (200, 404, 405) and read < READ_AHEAD, (route, read)


# -- item 12: decoding --------------------------------------------------------------------


def _png(w: int, h: int) -> bytes:
    """A real PNG of w x h pixels that compresses to little (one colour, some noise rows)."""
    im = Image.new("RGB", (w, h), (90, 140, 200))
    im.paste(Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, w, 3), np.uint8)), (0, h // 2))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _big_jpeg(cifar_small, w=4000, h=3000) -> bytes:
    src = sorted((cifar_small / "test" / "ship").glob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def narrow(served_collection, tmp_path_factory):
    """One decode slot, one queued upload, a 10-megapixel query limit."""
    path = tmp_path_factory.mktemp("nar") / "c.hsx"
    shutil.copytree(served_collection, path)
    app = create_app(
        path,
        api_key=API_KEY,
        cache_dir=tmp_path_factory.mktemp("narc"),
        decode_slots=1,
        max_queued=1,
        max_query_pixels=10_000_000,
    )
    with Server(app) as s:
        yield s


def test_queries_have_their_own_pixel_limit(narrow):
    png = _png(4000, 3000)  # 12 megapixels, a few kB
    assert len(png) < 200 * KIB
    r = httpx.post(narrow.url + "/search", files={"image": ("wide.png", png, "image/png")}, timeout=60)
    assert r.status_code == 413
    assert r.json()["detail"] == (
        "wide.png: 4000x3000 = 12,000,000 pixels is above this server's limit of 10,000,000 "
        "for a query (max_query_pixels (hashsearch serve --max-query-pixels)); send a smaller image"
    )
    r = httpx.post(narrow.url + "/images", files={"images": ("wide.png", png, "image/png")}, headers=KEY, timeout=60)
    assert r.status_code == 200 and len(r.json()["ids"]) == 1, r.text  # under max_pixels: added


def test_the_indexing_limit_is_the_cli_s_max_pixels():
    assert Limits().max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_query_pixels must be a positive integer, got 0"):
        Limits(max_query_pixels=0)


def test_a_large_jpeg_query_decodes_at_reduced_scale_as_the_indexer_does(narrow, cifar_small):
    hs = narrow.app.state.hs
    big = _big_jpeg(cifar_small, 3200, 2400)
    side = hs.coll.backbone.preprocess.input_size  # 128: 3200x2400 decodes at 1/8
    assert hs.decode(big, "big.jpg", query=True).size == (400, 300)
    assert min(hs.decode(big, "big.jpg", query=True).size) >= side
    # Added (decoded as the indexer decodes) then searched with the same bytes: itself at distance 0.
    added = httpx.post(
        narrow.url + "/images", files={"images": ("big.jpg", big, "image/jpeg")}, headers=KEY, timeout=60
    ).json()
    top, second = httpx.post(
        narrow.url + "/search",
        files={"image": ("big.jpg", big, "image/jpeg")},
        params={"k": 2, "rerank": 5},
        timeout=60,
    ).json()["results"]
    # The same features up to the float16 they are stored in.
    assert top["id"] == added["ids"][0] and top["hamming"] == 0
    assert top["rerank_distance"] < 0.05 * second["rerank_distance"]


def test_uploads_beyond_the_queue_get_503_before_their_body_is_read(narrow, cifar_small):
    hs = narrow.app.state.hs
    jpg = fresh_jpegs(cifar_small, 1, salt=40)[0][1]
    release = threading.Event()
    results = []

    def slow_upload():
        def body():  # a valid form whose file part arrives only once `release` is set
            yield _form_head("image", "slow.jpg").replace(b"image/png", b"image/jpeg")
            release.wait(30)
            yield jpg + b"\r\n--bnd--\r\n"

        results.append(httpx.post(narrow.url + "/search", content=body(), headers=MULTIPART, timeout=60).status_code)

    threads = [threading.Thread(target=slow_upload) for _ in range(hs.limits.max_pending_uploads)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while hs._admitted < hs.limits.max_pending_uploads:
        assert time.time() < deadline
        time.sleep(0.02)
    r = httpx.post(narrow.url + "/search", files={"image": ("q.jpg", jpg, "image/jpeg")}, timeout=60)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "busy" in r.json()["detail"] and r.headers["connection"] == "close"
    release.set()
    for t in threads:
        t.join(60)
    assert results == [200] * len(threads)
    assert (
        httpx.post(narrow.url + "/search", files={"image": ("q.jpg", jpg, "image/jpeg")}, timeout=60).status_code == 200
    )


def test_decoding_runs_in_at_most_decode_slots_threads(narrow, cifar_small):
    """Concurrent searches with distinct large queries: never more than one decodes at a time, in one thread."""
    hs = narrow.app.state.hs
    active, peak, lock = [0], [0], threading.Lock()
    decode = hs.decode

    threads_used = set()

    def watched(*a, **kw):  # observes the real decoder; changes nothing
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads_used.add(threading.current_thread().name)
        try:
            return decode(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    hs.decode = watched
    try:
        queries = [_big_jpeg(cifar_small, 1600 + 8 * i, 1200) for i in range(hs.limits.max_pending_uploads)]
        codes = []

        def search(q):
            codes.append(
                httpx.post(narrow.url + "/search", files={"image": ("q.jpg", q, "image/jpeg")}, timeout=60).status_code
            )

        threads = [threading.Thread(target=search, args=(q,)) for q in queries]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del hs.decode
    assert peak[0] == 1 and set(codes) <= {200, 503} and 200 in codes
    # Decoded pixels live only in the decoding threads (so only their malloc arenas hold them).
    assert len(threads_used) == 1 and threads_used.pop().startswith("hashsearch-decode")
