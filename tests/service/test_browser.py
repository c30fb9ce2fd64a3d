"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Never `playwright install`: the tests use the system browser at /usr/bin/chromium (CI:
`apt-get install -y chromium`, or `make browser`). If it is missing or does not launch, the tests
FAIL. Screenshots at 1280 and 390 px wide are saved under tests/service/artifacts/ (or
$HASHSEARCH_ARTIFACTS: `HASHSEARCH_ARTIFACTS=docs/img` renews the set docs/page.md shows).

The page's rule, checked after every step: the query it shows and the results it shows belong
together (`#query` and `#results` carry the same `data-kind`, and the ids shown are the API's
answer for that query), whatever order the server's answers arrive in.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

CHROMIUM = os.environ.get("HASHSEARCH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("HASHSEARCH_ARTIFACTS", Path(__file__).parent / "artifacts"))
K = 12

SHOWN = """() => {
  const q = document.getElementById('query'), r = document.getElementById('results');
  const st = document.getElementById('status');
  return {query: q.dataset.kind || '', results: r.dataset.kind || '', busy: r.hasAttribute('aria-busy'),
          caption: (q.querySelector('figcaption') || {}).textContent || '',
          ids: [...r.querySelectorAll('.result')].map(e => +e.dataset.id),
          titles: [...r.querySelectorAll('.result')].map(e => e.dataset.key),
          status: st.textContent, error: st.className === 'error'};
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} not found: install it with `make browser` (apt-get install -y chromium)"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser, server):
    """`open_page(width, height)`: the page loaded (stats shown), failing the test on any JS error
    or anything the server's content security policy refused."""
    pages, errors = [], []

    def open_(width=1280, height=800):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(server.url + "/")
        _until(page, "() => document.getElementById('stats').textContent.includes('images')")
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    assert not errors, errors


def _until(page, js, arg=None, timeout=30):
    """Poll the page until the JS function `js(arg)` is truthy; its value.

    Not `page.wait_for_function`: Playwright runs its predicate through `eval`, which the server's
    content security policy refuses (rightly); `page.evaluate` is not subject to it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {js}; the page shows {page.evaluate(SHOWN)}")
        page.wait_for_timeout(25)


@pytest.fixture(scope="module")
def queries(cifar_small, tmp_path_factory):
    """Three test images of different classes, each in the served collection, under distinct
    names (the page names a file query by its file name: `ship-0001.jpg`, `cat-0001.jpg`, ...)."""
    out = tmp_path_factory.mktemp("queries")
    paths = []
    for c in ("ship", "cat", "truck"):
        src = sorted((Path(cifar_small) / "test" / c).glob("*.jpg"))[1]
        paths.append(out / f"{c}-{src.name}")
        paths[-1].write_bytes(src.read_bytes())
    return paths


def _settled(page, kind):
    """Wait until the page shows `kind` as its query and no search is in flight."""
    _until(
        page,
        "k => document.getElementById('query').dataset.kind === k && "
        "!document.getElementById('results').hasAttribute('aria-busy')",
        kind,
    )
    return page.evaluate(SHOWN)


def _search_file(page, path):
    page.set_input_files("#file", str(path))
    return _shows_file(page, Path(path).name)


def _shows_file(page, name):
    """Wait until the page shows the file `name` as its query and no search is in flight."""
    _until(
        page,
        "n => (document.querySelector('#query figcaption') || {}).textContent === n && "
        "!document.getElementById('results').hasAttribute('aria-busy')",
        name,
    )
    return page.evaluate(SHOWN)


def _api_ids(client, query, k=K):
    """The API's answer for a query: an indexed id, or an image file."""
    if isinstance(query, int):
        r = client.get(f"/search/{query}", params={"k": k})
    else:
        r = client.post("/search", params={"k": k}, files={"image": (query.name, query.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    return [x["id"] for x in r.json()["results"]], r.json()["results"]


def _belongs(shown, client, query, k=K):
    """The page shows `query` and exactly the API's results for it."""
    if isinstance(query, int):
        assert shown["query"] == f"id:{query}", shown
    else:
        assert shown["query"] == "file" and shown["caption"] == query.name, shown
    assert shown["results"] == shown["query"], shown
    assert not shown["error"] and not shown["busy"], (shown["status"], shown)
    assert shown["ids"] == _api_ids(client, query, k)[0], shown


def _shown_key(r):
    """What the page may show of a result's file: its relative key, else its id (never an absolute path)."""
    k = r.get("key")
    if not isinstance(k, str) or not k or PurePosixPath(k).is_absolute() or PureWindowsPath(k).drive or "://" in k:
        return f"image {r['id']}"
    return k


def _no_horizontal_scroll(page, width):
    """The page is no wider than the viewport (nothing scrolls sideways but boxes made to)."""
    sw = page.evaluate("document.documentElement.scrollWidth")
    assert sw <= width, f"the page is {sw} px wide in a {width} px viewport"


def test_page_search_click_and_evaluation(open_page, client, cifar_small, queries):
    page = open_page(1280, 800)
    assert page.get_attribute("link[rel=icon]", "href") == "/favicon.ico"
    page.fill("#k", str(K))
    query = queries[0]
    shown = _search_file(page, query)
    _belongs(shown, client, query)
    assert (
        Counter(page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.label)"))["ship"] > K / 2
    )
    # Each result names its file by its key relative to the collection, never by a server path.
    assert shown["titles"] == [_shown_key(r) for r in _api_ids(client, query)[1]]
    assert str(Path(cifar_small).parent) not in page.content()
    _until(page, "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    _no_horizontal_scroll(page, 1280)
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    page.screenshot(path=str(ARTIFACTS / "search-1280.png"), full_page=True)

    clicked = shown["ids"][3]
    page.click(f"#results .result[data-id='{clicked}']")
    second = _settled(page, f"id:{clicked}")
    _belongs(second, client, clicked)
    assert second["ids"] != shown["ids"] and clicked not in second["ids"]

    page.select_option("#mode", "rerank")
    _until(page, "() => document.getElementById('status').textContent.includes('(rerank)')")
    page.select_option("#label", "cat")
    _until(
        page,
        "() => document.getElementById('status').textContent.includes('(rerank)') && "
        "[...document.querySelectorAll('#results .result')].every(e => e.dataset.label === 'cat')",
    )
    assert page.evaluate(SHOWN)["query"] == f"id:{clicked}"
    page.mouse.move(1, 1)  # the pointer off the results: no card's details drawn over it
    page.screenshot(path=str(ARTIFACTS / "click-1280.png"), full_page=True)

    page.click("#tab-eval")
    page.wait_for_selector("#map-plot polyline")
    page.wait_for_selector("#eval-table tbody tr")
    assert page.eval_on_selector_all("#map-plot polyline", "els => els.length") >= 1
    assert page.eval_on_selector_all("#pr-plot polyline", "els => els.length") >= 1
    _no_horizontal_scroll(page, 1280)
    page.screenshot(path=str(ARTIFACTS / "evaluation-1280.png"), full_page=True)


def test_results_never_show_a_server_path(open_page, client, queries):
    """A result names its file by its key relative to the collection; an answer whose key looks
    absolute (posix or Windows), or that has only the old absolute `path`, shows the id instead.

    The server's real answer, with three of its results' keys rewritten by Playwright on the way.
    """
    page = open_page(1280, 800)
    page.fill("#k", str(K))
    shown = _search_file(page, queries[0])
    clicked = shown["ids"][0]
    bad = ["/srv/photos/cat.jpg", "C:\\photos\\cat.jpg", None]

    def rewrite(route):
        resp = route.fetch()
        body = resp.json()
        for r, key in zip(body["results"], bad):
            if key is None:
                r.pop("key", None)
                r["path"] = "/srv/photos/old-api.jpg"
            else:
                r["key"] = key
        route.fulfill(response=resp, json=body)

    page.route(re.compile(r"/search/\d+\?"), rewrite)
    page.click(f"#results .result[data-id='{clicked}']")
    s = _settled(page, f"id:{clicked}")
    page.unroute_all()
    results = _api_ids(client, clicked)[1]
    assert s["ids"] == [r["id"] for r in results], s
    assert s["titles"][:3] == [f"image {r['id']}" for r in results[:3]], s
    assert s["titles"][3:] == [r["key"] for r in results[3:]] and all(t and t[0] != "/" for t in s["titles"]), s
    html = page.content()
    assert "/srv/" not in html and "photos\\cat" not in html, "a server path reached the page"


def _hold(page, pattern, method):
    """Hold the page's requests matching `pattern` and `method` until `_release`; let others through."""
    held = []

    def handler(route):
        if route.request.method == method:
            held.append(route)
        else:
            route.continue_()

    page.route(pattern, handler)
    return held


def _wait_held(page, held, n=1, timeout=20):
    """Wait until the list `held` (filled by a Playwright event handler) has `n` items."""
    deadline = time.monotonic() + timeout
    while len(held) < n:
        assert time.monotonic() < deadline, f"waited {timeout} s for {n} held, have {len(held)}"
        page.wait_for_timeout(10)


def _release(page, held):
    """Answer the held requests now, with the server's real answers (late, out of order)."""
    from playwright.sync_api import Error

    for route in held:
        try:
            route.fulfill(response=route.fetch())
        except Error:
            pass  # the page aborted it: fine, what it then shows is checked below
    page.wait_for_timeout(300)  # a late answer that the page did not drop would be drawn by now


# Records what the page shows after every change of the query, the results or the status (a
# MutationObserver's callback runs after each task that changed them), so a wrong pairing that is
# drawn and replaced a moment later is caught too.
RECORD = """() => {
  window.__seen = [];
  const take = () => {
    const q = document.getElementById('query'), r = document.getElementById('results');
    const st = document.getElementById('status');
    window.__seen.push({query: q.dataset.kind || '', results: r.dataset.kind || '',
      caption: (q.querySelector('figcaption') || {}).textContent || '',
      ids: [...r.querySelectorAll('.result')].map(e => +e.dataset.id),
      status: st.textContent, error: st.className === 'error'});
  };
  new MutationObserver(take).observe(document.querySelector('#view-search'),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


@pytest.mark.parametrize("slow", ["upload", "click"])
def test_late_answer_never_shows_under_another_query(open_page, client, cifar_small, queries, slow):
    """Issue 18 item 17: a slow query, then a click at once; no answer is ever drawn under another query.

    The slow request is held by Playwright's request interception (a real browser feature) and
    answered with the server's real answer after the other one: deterministic, where a large
    upload is only usually slow.
    """
    page = open_page(1280, 800)
    page.fill("#k", str(K))
    first, upload = queries[:2]
    shown = _search_file(page, first)
    _belongs(shown, client, first)
    clicked = shown["ids"][2]
    page.evaluate(RECORD)
    if slow == "upload":
        # The upload's answer is held (as a 16-megapixel query's would be); the click is answered first.
        held = _hold(page, re.compile(r"/search\?"), "POST")
        page.set_input_files("#file", str(upload))
        _wait_held(page, held)
        page.click(f"#results .result[data-id='{clicked}']")
        _belongs(_settled(page, f"id:{clicked}"), client, clicked)
        _release(page, held)
        _belongs(page.evaluate(SHOWN), client, clicked)
    else:
        # The click's answer is held; an upload made after it is answered first.
        held = _hold(page, re.compile(r"/search/\d+\?"), "GET")
        page.click(f"#results .result[data-id='{clicked}']")
        _wait_held(page, held)
        in_flight = page.evaluate(SHOWN)  # while it waits, the old query is shown with its own results
        assert in_flight["busy"] and in_flight["query"] == in_flight["results"] == "file", in_flight
        assert in_flight["ids"] == shown["ids"], in_flight
        page.set_input_files("#file", str(upload))
        _belongs(_shows_file(page, upload.name), client, upload)
        _release(page, held)
        _belongs(page.evaluate(SHOWN), client, upload)
    page.unroute_all()

    # Every state drawn on the way: a query with the API's results for it, and never an error.
    answers = {
        f"file:{first.name}": _api_ids(client, first)[0],
        f"file:{upload.name}": _api_ids(client, upload)[0],
        f"id:{clicked}": _api_ids(client, clicked)[0],
    }
    seen = page.evaluate("() => window.__seen")
    assert seen
    for state in seen:
        key = f"file:{state['caption']}" if state["query"] == "file" else state["query"]
        assert state["results"] == state["query"] and not state["error"], state
        assert state["ids"] == answers[key], state


def test_error_clears_old_results(open_page, client, cifar_small, queries):
    """After any failed search (refused upload, bad parameter, no server) no old result stays shown."""
    page = open_page(1280, 800)
    page.fill("#k", str(K))
    query = queries[0]
    assert len(_search_file(page, query)["ids"]) == K

    # The server refuses the upload: the message names the file; the old results are gone.
    page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"this is not an image"})
    _until(page, "() => document.getElementById('status').className === 'error'")
    s = page.evaluate(SHOWN)
    assert s["ids"] == [] and s["query"] == s["results"] == "file" and s["caption"] == "notes.jpg", s
    assert "notes.jpg" in s["status"] and "Traceback" not in s["status"], s
    assert not re.search(r"(?<![\w.])/(?:[\w.-]+/)+", s["status"]), s  # no server path
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    page.screenshot(path=str(ARTIFACTS / "error-1280.png"), full_page=True)

    # A parameter the server refuses (k=0), then corrected: the same query runs again.
    shown = _search_file(page, query)
    page.fill("#k", "0")
    page.dispatch_event("#k", "change")
    _until(page, "() => document.getElementById('status').className === 'error'")
    s = page.evaluate(SHOWN)
    assert s["ids"] == [] and re.search(r"\bk\b.*\b1\b", s["status"]), s  # the server's own words on k
    page.fill("#k", str(K))
    page.dispatch_event("#k", "change")
    _until(page, f"() => document.querySelectorAll('#results .result').length === {K}")
    _belongs(page.evaluate(SHOWN), client, query)

    # The connection fails (the server went away): the clicked query is shown with no results.
    page.route(re.compile(r"/search/\d+\?"), lambda route: route.abort("connectionrefused"))
    clicked = shown["ids"][1]
    page.click(f"#results .result[data-id='{clicked}']")
    _until(page, "() => document.getElementById('status').className === 'error'")
    s = page.evaluate(SHOWN)
    assert s["ids"] == [] and s["query"] == s["results"] == f"id:{clicked}", s
    assert "could not be reached" in s["status"], s
    page.unroute_all()


def test_phone_width_has_no_sideways_scroll(open_page, client, cifar_small, queries):
    page = open_page(390, 844)
    query = queries[0]
    _belongs(_search_file(page, query), client, query)
    _until(page, "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    _no_horizontal_scroll(page, 390)
    page.screenshot(path=str(ARTIFACTS / "search-390.png"), full_page=True)

    page.click("#tab-browse")
    _until(page, f"() => ({ENTRIES})().length === 24")
    _until(page, "() => [...document.querySelectorAll('#entries img')].every(i => i.complete && i.naturalWidth > 0)")
    _no_horizontal_scroll(page, 390)
    page.screenshot(path=str(ARTIFACTS / "browse-390.png"))

    page.click("#tab-eval")
    page.wait_for_selector("#pr-plot polyline")
    page.wait_for_selector("#eval-table tbody tr")
    _no_horizontal_scroll(page, 390)
    # The plots fit the screen and keep their text size (drawn at the width they are given).
    for svg in ("#map-plot", "#pr-plot"):
        box = page.eval_on_selector(
            svg, "e => [e.getBoundingClientRect().right, e.getBoundingClientRect().width, e.viewBox.baseVal.width]"
        )
        assert box[0] <= 390 and abs(box[1] - box[2]) <= 1, (svg, box)
    # The table (seven columns, wider than a phone) scrolls inside its own box.
    right, client_w, scroll_w = page.eval_on_selector(
        "#eval-table-box", "e => [e.getBoundingClientRect().right, e.clientWidth, e.scrollWidth]"
    )
    assert right <= 390 and scroll_w > client_w, (right, client_w, scroll_w)
    page.screenshot(path=str(ARTIFACTS / "evaluation-390.png"), full_page=True)


def _file_choosers(page):
    """The file choosers the page opens from now on (each key press that opens one adds it).

    Not `page.expect_file_chooser()` around the key press: Playwright turns Chromium's chooser
    interception on when the first listener is added, without waiting, so a key press sent at
    once can open a chooser nobody sees (puppeteer#6040 describes the same race). The listener
    is added first and a round trip made before any key is pressed.
    """
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.evaluate("() => 0")
    return choosers


def test_file_picker_and_results_by_keyboard(open_page, client, cifar_small, queries):
    page = open_page(1280, 800)
    page.fill("#k", str(K))
    page.evaluate("document.activeElement.blur()")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "drop":
            break
    else:
        pytest.fail("Tab never reaches the file picker")
    assert page.get_by_role("button", name=re.compile("Choose query images")).count() == 1
    ring = page.eval_on_selector(
        "#drop", "e => { const s = getComputedStyle(e); return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert ring[0] != "none" and ring[1] >= 2, ring
    page.screenshot(path=str(ARTIFACTS / "keyboard-1280.png"))

    first, second = queries[:2]
    choosers = _file_choosers(page)
    page.keyboard.press("Enter")
    _wait_held(page, choosers, 1)
    choosers[0].set_files(str(first))
    _belongs(_shows_file(page, first.name), client, first)
    page.keyboard.press(" ")
    _wait_held(page, choosers, 2)
    choosers[1].set_files(str(second))
    shown = _shows_file(page, second.name)
    _belongs(shown, client, second)

    # The results are buttons too: Tab to the first, Enter searches like it.
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('result')"):
            break
    else:
        pytest.fail("Tab never reaches a result")
    # The focused result shows its details (as on hover), and says which result it is.
    focused = page.evaluate("+document.activeElement.dataset.id")
    assert page.is_visible(f"#results .result[data-id='{focused}'] .details")
    page.screenshot(path=str(ARTIFACTS / "keyboard-result-1280.png"))
    page.keyboard.press("Enter")
    _belongs(_settled(page, f"id:{shown['ids'][0]}"), client, shown["ids"][0])

    # Enter in a setting runs the query again with it.
    page.focus("#k")
    page.fill("#k", "5")
    page.keyboard.press("Enter")
    _until(page, "() => document.querySelectorAll('#results .result').length === 5")
    _belongs(_settled(page, f"id:{shown['ids'][0]}"), client, shown["ids"][0], k=5)


def test_server_is_warm_when_it_reports_started(served_collection, tmp_path, server_class, cifar_small, browser):
    """The model is loaded and a search has run before uvicorn reports itself started, so the
    first user's search is as quick as the later ones (before: about 1.3 s for the first;
    `benchmarks/first_search.py` measures it in fresh processes). This server has no API key:
    its page offers no key field and no Delete button."""
    import httpx

    from hashsearch.service import create_app

    app = create_app(served_collection, cache_dir=tmp_path / "cache")
    hs = app.state.hs
    assert hs._extractor is None  # nothing loaded by the constructor
    with server_class(app) as s:
        assert hs._extractor is not None, "uvicorn reported itself started before the extractor was loaded"
        query = sorted((Path(cifar_small) / "test" / "ship").glob("*.jpg"))[0].read_bytes()
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = c.post("/search", params={"k": 5}, files={"image": ("q.jpg", query, "image/jpeg")})
        assert r.status_code == 200 and len(r.json()["results"]) == 5, r.text

        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(s.url + "/")
            _until(page, "() => document.getElementById('stats').textContent.includes('images')")
            page.click("#tab-browse")
            _until(page, f"() => ({ENTRIES})().length === 24")
            assert page.eval_on_selector_all("#entries .delete", "e => e.length") == 0
            assert not page.is_visible("#view-browse .api-key")
        finally:
            page.close()


def _visible(page, selectors):
    return {s: page.is_visible(s) for s in selectors}


def test_settings_spinner_cancel_more_and_details(open_page, client, queries):
    """Issue 22.4: the empty-state hint; only the settings of the chosen mode; a spinner while a
    search waits, Escape to cancel it; "More results" (k grows, the API's answer for the new k);
    a result's file, label and distance on hover."""
    page = open_page(1280, 800)
    assert page.is_visible("#hint") and "paste" in page.text_content("#hint")
    assert page.eval_on_selector_all("#results > *", "e => e.length") == 0
    page.screenshot(path=str(ARTIFACTS / "empty-1280.png"))

    settings = ("#k", "#radius", "#rerank", "#label")
    assert _visible(page, settings) == {"#k": True, "#radius": False, "#rerank": False, "#label": True}
    page.select_option("#mode", "radius")
    assert _visible(page, settings) == {"#k": True, "#radius": True, "#rerank": False, "#label": True}
    page.select_option("#mode", "rerank")
    assert _visible(page, settings) == dict.fromkeys(settings, True)
    assert "re-ranked" in page.text_content("#mode-help")
    page.select_option("#mode", "hamming")
    page.fill("#k", str(K))

    query = queries[0]
    shown = _search_file(page, query)
    _belongs(shown, client, query)
    assert not page.is_visible("#spinner") and not page.is_visible("#hint")

    # The spinner turns while an answer is held (a GET: Chromium does not hand a held upload's
    # body back to Playwright), and stops when it is drawn.
    held = _hold(page, re.compile(r"/search/\d+\?"), "GET")
    page.click(f"#results .result[data-id='{shown['ids'][0]}']")
    _wait_held(page, held)
    assert page.is_visible("#spinner") and "searching" in page.text_content("#status")
    page.mouse.move(1, 1)
    page.screenshot(path=str(ARTIFACTS / "spinner-1280.png"))
    _release(page, held)
    _belongs(_settled(page, f"id:{shown['ids'][0]}"), client, shown["ids"][0])
    assert not page.is_visible("#spinner")

    # Escape cancels a search in flight: the page keeps the query and results it showed, and the
    # late answer is never drawn.
    shown = _search_file(page, query)
    page.click(f"#results .result[data-id='{shown['ids'][1]}']")
    _wait_held(page, held, 2)
    assert page.is_visible("#spinner")
    page.keyboard.press("Escape")
    s = page.evaluate(SHOWN)
    assert not page.is_visible("#spinner") and s["status"] == "search cancelled" and not s["busy"], s
    _release(page, held[1:])
    page.unroute_all()
    s = page.evaluate(SHOWN)
    assert s["query"] == s["results"] == "file" and s["ids"] == shown["ids"], s

    # More results: k grows by its first value; the page shows the API's answer for the new k.
    page.click("#more")
    _until(page, f"() => document.querySelectorAll('#results .result').length === {2 * K}")
    assert page.input_value("#k") == str(2 * K)
    _belongs(page.evaluate(SHOWN), client, query, k=2 * K)

    # Hover: the result's key, label and Hamming distance over its picture, inside its card.
    top = _api_ids(client, query, 2 * K)[1][4]
    card = f"#results .result[data-id='{top['id']}']"
    assert not page.is_visible(f"{card} .details")
    page.hover(card)
    text = page.inner_text(f"{card} .details")
    assert _shown_key(top) in text and f"label: {top['label']}" in text, text
    assert f"Hamming {top['distance']} of 32 bits" in text and f"id {top['id']}" in text, text
    inner, outer = page.locator(f"{card} .details").bounding_box(), page.locator(card).bounding_box()
    assert outer["x"] <= inner["x"] and inner["x"] + inner["width"] <= outer["x"] + outer["width"], (inner, outer)
    page.screenshot(path=str(ARTIFACTS / "hover-1280.png"))

    # A search that finds nothing says what to change (radius 0 and another class's label).
    none = client.post(
        "/search",
        params={"k": K, "radius": 0, "label": "cat"},
        files={"image": (query.name, query.read_bytes(), "image/jpeg")},
    )
    assert none.status_code == 200 and none.json()["results"] == [], none.text
    page.select_option("#mode", "radius")
    page.fill("#radius", "0")
    page.select_option("#label", "cat")
    _until(page, "() => document.querySelector('#results .empty')")
    assert "raise the radius" in page.text_content("#results .empty") and not page.is_visible("#more")
    assert page.evaluate(SHOWN)["ids"] == []


def _png(path) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    return buf.getvalue()


def test_paste_and_drop_several(open_page, client, queries):
    """An image pasted from the clipboard (Ctrl+V) is searched; several files dropped at once are
    searched one by one, each answer in its own group under its file's name."""
    page = open_page(1280, 900)
    page.fill("#k", "6")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.bring_to_front()
    page.evaluate(
        """async (bytes) => {
        const blob = new Blob([new Uint8Array(bytes)], {type: 'image/png'});
        await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]); }""",
        list(_png(queries[1])),
    )
    page.keyboard.press("ControlOrMeta+V")
    shown = _settled(page, "file")
    png = ("pasted.png", _png(queries[1]))
    r = client.post("/search", params={"k": 6}, files={"image": (png[0], png[1], "image/png")})
    assert shown["ids"] == [x["id"] for x in r.json()["results"]] and not shown["error"], shown

    # Three files dropped on the drop box: three groups, each the API's answer for its file.
    files = [{"name": q.name, "bytes": list(q.read_bytes())} for q in queries]
    transfer = page.evaluate_handle(
        """(files) => { const dt = new DataTransfer();
        for (const f of files) dt.items.add(new File([new Uint8Array(f.bytes)], f.name, {type: 'image/jpeg'}));
        return dt; }""",
        files,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    _settled(page, "batch")
    groups = page.eval_on_selector_all(
        "#results .group",
        "gs => gs.map(g => ({name: g.dataset.name, done: !!g.dataset.done, "
        "ids: [...g.querySelectorAll('.result')].map(e => +e.dataset.id)}))",
    )
    assert [g["name"] for g in groups] == [q.name for q in queries], groups
    for g, q in zip(groups, queries):
        assert g["done"] and g["ids"] == _api_ids(client, q, 6)[0], (g, q.name)
    assert page.text_content("#query figcaption") == "3 images"
    assert page.text_content("#status").startswith("3 queries: 18 results"), page.text_content("#status")
    _until(page, "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector_all("#results .group-head img", "e => e.length") == 3  # each file's own picture
    _no_horizontal_scroll(page, 1280)
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    page.screenshot(path=str(ARTIFACTS / "several-1280.png"), full_page=True)


ENTRIES = "() => [...document.querySelectorAll('#entries .entry')].map(e => +e.dataset.id)"


def test_browse_pages_and_delete_with_the_key(open_page, client):
    """The collection page by page (one GET /entries?offset=&limit= a page); deleting needs two
    presses and the API key: no key or a wrong key deletes nothing and says why, Escape calls a
    delete off."""
    from .conftest import API_KEY

    count = client.get("/stats").json()["count"]
    page = open_page(1280, 900)
    asked = []
    page.on("request", lambda r: "/entries" in r.url and asked.append(r.url.split("/", 3)[3]))
    page.click("#tab-browse")
    first = _until(page, f"() => {{ const ids = ({ENTRIES})(); return ids.length === 24 && ids; }}")
    assert asked == ["entries?offset=0&limit=24"]
    assert first == [e["id"] for e in client.get("/entries", params={"limit": 24}).json()["entries"]]
    assert page.text_content("#page-info") == f"1–24 of {count}"
    assert page.is_disabled("#prev") and not page.is_disabled("#next")
    for i in first[:3]:
        e = client.get(f"/entries/{i}").json()
        assert page.text_content(f"#entries .entry[data-id='{i}'] .path") == _shown_key(e)
    page.click("#next")
    _until(page, f"() => document.getElementById('page-info').textContent === '25–48 of {count}'")
    second = page.evaluate(ENTRIES)
    assert len(second) == 24 and min(second) > max(first) and asked[-1] == "entries?offset=24&limit=24"
    page.click("#prev")
    _until(page, "() => document.getElementById('page-info').textContent.startsWith('1–24')")
    assert page.evaluate(ENTRIES) == first
    _until(page, "() => [...document.querySelectorAll('#entries img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "browse-1280.png"), full_page=True)

    victim = first[5]
    button = f"#entries .entry[data-id='{victim}'] .delete"
    # One press arms it, Escape calls it off; without the key, a second press deletes nothing.
    page.click(button)
    assert page.text_content(button) == "Confirm delete"
    page.keyboard.press("Escape")
    assert page.text_content(button) == "Delete"
    page.click(button)
    page.click(button)
    assert "API key" in page.text_content("#browse-status") and page.evaluate(
        "() => document.activeElement.classList.contains('api-key')"
    )
    # A wrong key: the server's refusal, in one line; the image stays.
    page.fill("#view-browse .api-key", "wrong-key")
    page.click(button)
    page.click(button)
    _until(page, "() => document.getElementById('browse-status').className === 'error'")
    assert "not deleted" in page.text_content("#browse-status") and "X-API-Key" in page.text_content("#browse-status")
    assert client.get(f"/entries/{victim}").status_code == 200
    # The right key: gone from the page and the collection; the count follows.
    page.fill("#view-browse .api-key", API_KEY)
    page.click(button)
    page.screenshot(path=str(ARTIFACTS / "delete-1280.png"))
    page.click(button)
    _until(page, f"() => !document.querySelector(\"#entries .entry[data-id='{victim}']\")")
    assert client.get(f"/entries/{victim}").status_code == 404
    assert client.get("/stats").json()["count"] == count - 1
    assert f"{count - 1} images" in page.text_content("#stats")
    assert f"image {victim} deleted" in page.text_content("#browse-status")
    # The page is read again: the next image moves up to fill it.
    _until(page, f"() => ({ENTRIES})().length === 24")
    assert page.evaluate(ENTRIES) == [i for i in first if i != victim] + [second[0]]
    assert page.text_content("#page-info") == f"1–24 of {count - 1}"


# The duplicates view has its answer (groups, or the message that there are none).
DUPS_SHOWN = "() => document.getElementById('dup-spinner').hidden && document.getElementById('dup-status').textContent"


def _groups_shown(page):
    return page.eval_on_selector_all(
        "#dup-groups .dup-group",
        "gs => gs.map(g => ({ids: [...g.querySelectorAll('.entry')].map(e => +e.dataset.id), "
        "keep: [...g.querySelectorAll('.entry.keep')].map(e => +e.dataset.id)}))",
    )


def test_duplicates_view(open_page, client, cifar_small):
    """The duplicates view shows GET /duplicates' groups (the kept image marked) for two planted
    copies (an exact one and a resized, re-encoded one), and deletes a copy with the key.

    The page's own answer is read from its response (each request whitens the stored features,
    seconds on a loaded 2-core machine), so the server is asked once per page."""
    import io

    from PIL import Image

    from .conftest import API_KEY

    horse = sorted((Path(cifar_small) / "train" / "horse").glob("*.jpg"))[0]
    frog = sorted((Path(cifar_small) / "train" / "frog").glob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.open(frog).convert("RGB").resize((48, 48), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=70)
    r = client.post(
        "/images",
        headers={"X-API-Key": API_KEY},
        data={"keep_duplicates": "true"},
        files=[
            ("images", ("horse-copy.jpg", horse.read_bytes(), "image/jpeg")),
            ("images", ("frog-48px.jpg", buf.getvalue(), "image/jpeg")),
        ],
    )
    assert r.status_code == 200 and len(r.json()["ids"]) == 2, r.text
    copy_id = r.json()["ids"][0]

    page = open_page(1280, 900)
    page.click("#tab-dups")
    assert page.is_visible("#dup-hint") and page.evaluate("document.activeElement.id") == "dup-find"
    with page.expect_response(re.compile(r"/duplicates\?"), timeout=120_000) as answer:
        page.keyboard.press("Enter")  # the focused "Find duplicates"
    api = answer.value.json()
    _until(page, DUPS_SHOWN, timeout=30)
    assert not page.is_visible("#dup-hint")
    # The planted exact copy is grouped with its original, and marked as such.
    exact = next(g for g in api["groups"] if copy_id in [m["id"] for m in g["members"]])
    gone = next(m["id"] for m in exact["members"] if m["exact"] and not m["keep"])
    assert _groups_shown(page) == [{"ids": [m["id"] for m in g["members"]], "keep": [g["keep"]]} for g in api["groups"]]
    n, d = api["n_groups"], api["n_duplicates"]
    assert page.text_content("#dup-status").startswith(f"{n} group{'s' * (n != 1)}, {d} duplicate{'s' * (d != 1)}")
    card = f"#dup-groups .entry[data-id='{gone}']"
    assert page.text_content(f"{card} .badge") == "exact copy"
    _until(page, "() => [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)")
    _no_horizontal_scroll(page, 1280)
    page.screenshot(path=str(ARTIFACTS / "duplicates-1280.png"), full_page=True)

    # Groups that pass only narrowly carry a note (asked with a threshold that leaves the frog's copy, at a
    # similarity near 0.7, within 0.1 of it), as the API marks them.
    lowest = min(m["similarity"] for g in api["groups"] for m in g["members"] if not m["keep"])
    page.fill("#dup-sim", f"{lowest - 0.05:.2f}")
    with page.expect_response(re.compile(r"/duplicates\?"), timeout=120_000) as answer:
        page.press("#dup-sim", "Enter")
    narrowed = answer.value.json()
    _until(page, DUPS_SHOWN, timeout=30)
    narrow = page.evaluate("[...document.querySelectorAll('#dup-groups .dup-group.narrow')].map(s => +s.dataset.group)")
    assert narrow == [g["group"] for g in narrowed["groups"] if g["narrow"]] and narrow, narrowed
    for k in narrow:
        note = page.text_content(f"#dup-groups .dup-group[data-group='{k}'] .narrow-note")
        assert f"below {narrowed['narrow_below']}" in note and "look before deleting" in note
    _until(page, "() => [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "duplicates-narrow-1280.png"), full_page=True)

    # Deleting the copy that is not kept: gone from the view and from the collection.
    page.fill("#view-dups .api-key", API_KEY)
    page.click(f"{card} .delete")
    page.click(f"{card} .delete")
    _until(page, f'() => !document.querySelector("{card}")')
    assert client.get(f"/entries/{gone}").status_code == 404
    if exact["size"] == 2:
        title = page.text_content(f"#dup-groups .dup-group[data-group='{exact['group']}'] h2")
        assert title.endswith("resolved: one image left"), title

    # "codes only" asks for no feature check and greys out the similarity field.
    with page.expect_request(re.compile(r"/duplicates\?")) as asked:
        page.check("#dup-codes")
    assert "codes_only=true" in asked.value.url and "min_similarity" not in asked.value.url
    assert page.is_disabled("#dup-sim")
    _until(page, DUPS_SHOWN, timeout=60)

    phone = open_page(390, 844)
    phone.click("#tab-dups")
    phone.click("#dup-find")
    _until(phone, DUPS_SHOWN, timeout=120)
    assert phone.get_attribute("#dup-status", "class") != "error", phone.text_content("#dup-status")
    _until(
        phone, "() => [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    _no_horizontal_scroll(phone, 390)
    phone.screenshot(path=str(ARTIFACTS / "duplicates-390.png"))
