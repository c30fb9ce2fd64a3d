"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Never `playwright install`: the test uses the system browser at /usr/bin/chromium (CI:
`apt-get install -y chromium`). If it is missing or does not launch, the test FAILS.
The screenshots are saved under tests/service/artifacts/ (or $HASHSEARCH_ARTIFACTS).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

CHROMIUM = os.environ.get("HASHSEARCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("HASHSEARCH_ARTIFACTS", Path(__file__).parent / "artifacts"))
K = 12


def test_page_search_click_and_evaluation(server, cifar_small):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    query = sorted((Path(cifar_small) / "test" / "ship").glob("*.jpg"))[1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('stats').textContent.includes('images')")
            page.fill("#k", str(K))
            page.set_input_files("#file", str(query))
            page.wait_for_function(f"document.querySelectorAll('#results .result').length === {K}")
            labels = page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.label)")
            assert Counter(labels)["ship"] > K / 2, labels
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(ARTIFACTS / "search.png"), full_page=True)

            first_ids = page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.id)")
            clicked = first_ids[3]
            page.click(f"#results .result[data-id='{clicked}']")
            page.wait_for_function(f"document.getElementById('query').dataset.kind === 'id:{clicked}' && "
                                   "document.getElementById('status').textContent.includes('results')")
            second = page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.id)")
            assert len(second) == K and second != first_ids and clicked not in second

            page.select_option("#mode", "rerank")
            page.wait_for_function("document.getElementById('status').textContent.includes('(rerank)')")
            page.select_option("#label", "cat")
            page.wait_for_function("document.getElementById('status').textContent.includes('(rerank)') && "
                                   "[...document.querySelectorAll('#results .result')].every(e => e.dataset.label === 'cat')")
            page.screenshot(path=str(ARTIFACTS / "click.png"), full_page=True)

            page.click("#tab-eval")
            page.wait_for_selector("#map-plot polyline")
            assert page.eval_on_selector_all("#map-plot polyline", "els => els.length") >= 1
            assert page.eval_on_selector_all("#pr-plot polyline", "els => els.length") >= 1
            page.screenshot(path=str(ARTIFACTS / "evaluation.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
