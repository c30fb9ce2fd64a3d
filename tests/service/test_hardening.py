"""Offline /docs, the favicon, Host allow-list, security headers, the write log, and job limits
(issue 18, items 16 and 18), against real servers on loopback."""

from __future__ import annotations

import io
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from hashsearch.cli.serve import allowed_host_list
from hashsearch.service import create_app

from .conftest import API_KEY, Server, fresh_jpegs

KEY = {"X-API-Key": API_KEY}
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def hardened(served_collection, tmp_path_factory):
    """A server with a Host allow-list, one background job at a time, finished jobs kept 1 s."""
    path = tmp_path_factory.mktemp("hard") / "c.hsx"
    shutil.copytree(served_collection, path)
    app = create_app(
        path,
        api_key=API_KEY,
        cache_dir=tmp_path_factory.mktemp("hardc"),
        allowed_hosts=["127.0.0.1", "localhost"],
        max_jobs=1,
        job_ttl_s=1,
        decode_slots=1,
    )
    with Server(app) as s:
        yield s


def _links(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""url\s*:\s*['"]([^'"]+)['"]""", html
    )


def test_docs_reference_nothing_outside_the_server_and_their_assets_load(hardened):
    with httpx.Client(base_url=hardened.url, timeout=60) as c:
        html = c.get("/docs").text
        assert "SwaggerUIBundle" in html and not re.search(r"https?://|//[a-z0-9]", html, re.I)
        links = _links(html)
        assert {"/openapi.json", "/favicon.ico"} <= set(links) and len(links) >= 4
        for link in links:
            r = c.get(link)
            assert r.status_code == 200 and len(r.content) > 0, link
        assert "SwaggerUIBundle" in c.get(next(x for x in links if x.endswith(".js"))).text


def test_docs_render_in_a_browser_with_the_network_cut_off(hardened):
    """Chromium loads /docs with every request outside the server aborted: the operations appear."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
    outside, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            def route(r):
                if r.request.url.startswith(hardened.url):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(hardened.url + "/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            ops = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert {"/search", "/images/{image_id}", "/jobs/{job_id}"} <= {o.replace("\u200b", "") for o in ops}
    assert outside == [] and errors == []


def test_favicon(hardened):
    r = httpx.get(hardened.url + "/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)


def test_hosts_outside_the_allow_list_are_refused(hardened):
    assert httpx.get(hardened.url + "/health", headers={"Host": "attacker.example"}).status_code == 400
    assert httpx.get(hardened.url + "/health", headers={"Host": f"attacker.example:{hardened.port}"}).status_code == 400
    assert httpx.get(hardened.url + "/health").status_code == 200
    assert httpx.get(hardened.url + "/health", headers={"Host": f"localhost:{hardened.port}"}).status_code == 200


def test_serve_defaults_to_loopback_names_on_a_loopback_address():
    assert allowed_host_list("127.0.0.1", None) == ["localhost", "127.0.0.1"]
    assert allowed_host_list("0.0.0.0", None) is None
    assert allowed_host_list("0.0.0.0", "photos.example, 10.0.0.5") == ["photos.example", "10.0.0.5"]
    assert allowed_host_list("127.0.0.1", "*") == ["*"]


@pytest.mark.parametrize(
    "route", ["/", "/docs", "/stats", "/entries/0", "/entries/999999", "/static/app.js", "/favicon.ico"]
)
def test_security_headers_on_every_answer(hardened, route):
    h = httpx.get(hardened.url + route).headers
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    csp = h["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp
    # Inline scripts and styles only where Swagger UI needs them.
    assert ("'unsafe-inline'" in csp) == (route == "/docs")


def test_refusals_carry_the_headers_too(hardened):
    h = httpx.post(hardened.url + "/images", files={"images": ("a.jpg", b"x", "image/jpeg")}).headers
    assert h["x-frame-options"] == "DENY" and "content-security-policy" in h


def test_every_write_is_logged(hardened, cifar_small, caplog):
    ((name, data),) = fresh_jpegs(cifar_small, 1, salt=30)
    # From a source address of its own: the line of an earlier test's request, logged after its
    # answer was sent, may reach this test's capture; only this client's lines are counted.
    me = "127.0.0.2"
    with (
        caplog.at_level(logging.INFO, logger="hashsearch.service.access"),
        httpx.Client(base_url=hardened.url, timeout=60, transport=httpx.HTTPTransport(local_address=me)) as c,
    ):
        new = c.post("/images", files={"images": (name, data, "image/jpeg")}, headers=KEY).json()["ids"][0]
        c.post("/images", files={"images": (name, data, "image/jpeg")}, headers=KEY)  # a duplicate now
        c.delete(f"/images/{new}", headers=KEY)
        c.delete("/images/1")  # no key
        c.get("/stats")
        c.post("/search", files={"image": (name, data, "image/jpeg")})
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "hashsearch.service.access"]
    lines = [line for line in lines if f" from {me}:" in line]
    assert len(lines) == 4, lines
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
    assert re.fullmatch(
        stamp
        + rf" write POST /images from 127\.0\.0\.2:\d+ -> 200 \{{\"ids\":\[{new}\],\"duplicates\":\[\],\"errors\":0\}}",
        lines[0],
    )
    assert lines[1].endswith(f'-> 200 {{"ids":[],"duplicates":[{new}],"errors":0}}')
    assert re.fullmatch(
        stamp + rf" write DELETE /images/{new} from 127\.0\.0\.2:\d+ -> 200 \{{\"ids\":\[{new}\]\}}", lines[2]
    )
    assert " write DELETE /images/1 from 127.0.0.2:" in lines[3] and lines[3].endswith("-> 401 {}")


def test_at_most_max_jobs_run_and_finished_jobs_expire(hardened, cifar_small):
    hs = hardened.app.state.hs
    files = [("images", (n, d, "image/jpeg")) for n, d in fresh_jpegs(cifar_small, 2, salt=31)]
    with httpx.Client(base_url=hardened.url, timeout=60) as c:
        release = threading.Event()
        hs._decoder.submit(release.wait, 30)  # takes the only decoding thread: the job waits in its first decode
        try:
            first = c.post("/images", files=files, data={"background": "true"}, headers=KEY).json()
            assert first["state"] == "running"
            r = c.post("/images", files=files, data={"background": "true"}, headers=KEY)
            assert r.status_code == 503 and r.headers["retry-after"] and "max_jobs=1" in r.json()["detail"]
        finally:
            release.set()
        while (j := c.get(f"/jobs/{first['id']}").json())["state"] == "running":
            time.sleep(0.05)
        assert j["state"] == "done" and len(j["ids"]) == 2
        second = c.post("/images", files=files, data={"background": "true"}, headers=KEY).json()  # room again
        while c.get(f"/jobs/{second['id']}").json()["state"] == "running":
            time.sleep(0.05)
        time.sleep(1.2)  # past the 1 s TTL
        r = c.get(f"/jobs/{first['id']}")
        assert r.status_code == 404 and "kept for 1 s" in r.json()["detail"]
        assert first["id"] not in hs.jobs and second["id"] not in hs.jobs
