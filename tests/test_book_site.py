"""The built book, opened in headless Chromium: what a reader sees offline.

Run by ``make check-book`` (which builds the book first). Skipped unless ``LABKIT_BOOK_HTML`` names the built
site (``_build/html``). The site is served from a local HTTP server started by this module and stopped at its
end, and every request that leaves it is blocked, so the checks hold offline. For every page of the table of
contents: the page loads, the mathematics is typeset by the MathJax copy shipped with the book, every image
loads, no cell output holds a traceback, and every internal link (and its anchor) resolves. On the chapter
pages, in addition: each exercise solution is hidden until its toggle is clicked, and the Colab and Binder
launch buttons open this notebook of the repository named in ``_config.yml``.

The browser is Chromium driven by Playwright: ``$LABKIT_CHROMIUM``, else ``/usr/bin/chromium`` (Debian) or
another system Chromium/Chrome, else the one ``python -m playwright install chromium`` downloads.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

from labkit import classroom

ROOT = Path(__file__).resolve().parents[1]
SITE = os.environ.get("LABKIT_BOOK_HTML")
if not SITE:
    pytest.skip("the browser check runs on a built book: make check-book (sets LABKIT_BOOK_HTML=_build/html)",
                allow_module_level=True)
SITE_DIR = Path(SITE).resolve()

# Scripts myst-nb adds for embedding ipywidgets; a static page cannot run the widget without a kernel anyway.
# Everything else a page asks for must come from the site itself.
ALLOWED_EXTERNAL = ("https://cdnjs.cloudflare.com/ajax/libs/require.js/",
                    "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@")
TRACEBACK = "Traceback (most recent call last)"


PAGES = classroom.book_pages(ROOT)
CHAPTERS = [f for f in PAGES if f.startswith("notebooks/")]


def _chromium() -> str | None:
    for candidate in (os.environ.get("LABKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None  # Playwright's own download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE_DIR / "index.html").is_file():
        pytest.fail(f"LABKIT_BOOK_HTML={SITE}: no index.html there; build the book first (make book)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=SITE_DIR))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser check needs Playwright: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Visit:
    """One page opened in a fresh browser context: its DOM facts, console errors and blocked requests."""

    def __init__(self, browser, base: str, page_file: str):
        self.url = base + page_file + ".html"
        self.external: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context()
        self.context.route("**/*", self._route(base))
        self.page = self.context.new_page()
        self.page.on("requestfailed", lambda request: self.failed.append(request.url))
        response = self.page.goto(self.url, wait_until="load", timeout=60_000)
        self.status = response.status if response else None
        self.mathjax_ok = self.page.evaluate(
            "async () => { if (!window.MathJax || !MathJax.startup) return false;"
            " await MathJax.startup.promise; return true; }")

    def _route(self, base):
        def handle(route):
            url = route.request.url
            if url.startswith(base) or url.startswith("data:"):
                route.continue_()
            else:
                self.external.append(url)
                route.abort()
        return handle

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def visits(browser, server):
    opened = {page: Visit(browser, server, page) for page in PAGES}
    yield opened
    for visit in opened.values():
        visit.close()


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_offline(visits, page):
    visit = visits[page]
    assert visit.status == 200, f"{visit.url}: HTTP {visit.status}"
    needed = [u for u in visit.external if not u.startswith(ALLOWED_EXTERNAL)]
    assert not needed, f"{page} asks the network for {needed}"
    local_failures = [u for u in visit.failed if u not in visit.external]
    assert not local_failures, f"{page}: requests that failed: {local_failures}"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_by_the_shipped_mathjax(visits, page):
    visit = visits[page]
    facts = visit.page.evaluate(r"""() => ({
        math: document.querySelectorAll('.math').length,
        untypeset: [...document.querySelectorAll('.math')].filter(e => {
                       const rest = e.cloneNode(true);
                       rest.querySelectorAll('mjx-container').forEach(m => m.remove());
                       return !e.querySelector('mjx-container') || /\\[()\[\]]|\$\$/.test(rest.textContent);
                   }).map(e => e.textContent.slice(0, 60)),
        errors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error')),
    })""")
    if page in CHAPTERS:
        assert facts["math"] > 0, f"{page}: a chapter without any typeset mathematics"
    if facts["math"] == 0:
        return  # Sphinx loads MathJax only on pages with mathematics
    source = visit.page.evaluate("() => (document.querySelector('script[src*=\"mathjax\"]') || {}).src || ''")
    assert "/_static/mathjax/tex-mml-chtml.js" in source, f"{page}: MathJax comes from {source!r}"
    assert urllib.parse.urlsplit(source).netloc == urllib.parse.urlsplit(visit.url).netloc, source
    assert visit.mathjax_ok, f"{page}: MathJax did not start"
    assert not facts["untypeset"], f"{page}: math left as source: {facts['untypeset'][:3]}"
    assert not facts["errors"], f"{page}: MathJax errors: {facts['errors'][:3]}"


@pytest.mark.parametrize("page", PAGES)
def test_every_image_loads(visits, page):
    images = visits[page].page.evaluate(
        "() => [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}))")
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{page}: images that did not load: {broken}"
    if page in CHAPTERS:
        figures = [i for i in images if "/_images/" in i["src"]]
        assert figures, f"{page}: a chapter without any figure"


@pytest.mark.parametrize("page", PAGES)
def test_no_cell_output_holds_a_traceback(visits, page):
    outputs = visits[page].page.evaluate(
        "() => [...document.querySelectorAll('.cell_output, .output')].map(e => e.innerText)")
    bad = [text[:300] for text in outputs if TRACEBACK in text]
    assert not bad, f"{page}: a cell output holds an error:\n{bad[0]}"
    errors = visits[page].page.evaluate("() => document.querySelectorAll('.output.traceback, .output.error').length")
    assert errors == 0


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def _ids(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(visits, server, page):
    visit = visits[page]
    hrefs = visit.page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    broken = []
    for href in sorted(set(hrefs)):
        if not href.startswith(server):
            continue
        parsed = urllib.parse.urlsplit(href)
        relative = urllib.parse.unquote(parsed.path)[1:]
        target = SITE_DIR / relative
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} (no file {relative})")
            continue
        if parsed.fragment and target.suffix == ".html":
            if urllib.parse.unquote(parsed.fragment) not in _ids(target):
                broken.append(f"{href} (no anchor #{parsed.fragment} in {relative})")
    assert not broken, f"{page}: broken internal links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", CHAPTERS)
def test_solutions_are_hidden_until_clicked(visits, page):
    pg = visits[page].page
    solutions = pg.locator(".solution")
    n = solutions.count()
    assert n >= 3, f"{page}: expected at least 3 exercise solutions, found {n}"
    for i in range(n):
        solution = solutions.nth(i)
        body = solution.locator(":scope > :not(.admonition-title)").first
        assert body.count() == 1, f"{page}: solution {i + 1} has no body"
        assert not body.is_visible(), f"{page}: solution {i + 1} is visible before its toggle is clicked"
        solution.locator("button.toggle-button").click()
        body.wait_for(state="visible", timeout=5_000)
        assert body.is_visible(), f"{page}: solution {i + 1} stays hidden after a click"


@pytest.mark.parametrize("page", CHAPTERS)
def test_launch_buttons_open_this_notebook_in_the_repository(visits, page):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].rstrip("/")
    branch = config["repository"].get("branch", "main")
    owner_name = urllib.parse.urlsplit(repo).path.strip("/")
    notebook = page + ".ipynb"
    assert (ROOT / notebook).is_file()
    hrefs = visits[page].page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    colab = f"https://colab.research.google.com/github/{owner_name}/blob/{branch}/{notebook}"
    binder = f"https://mybinder.org/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{notebook}"
    assert colab in hrefs, f"{page}: no Colab button to {colab}"
    assert binder in hrefs, f"{page}: no Binder button to {binder}"
    # Binder builds environment.yml and runs postBuild, which installs labkit from the checkout
    assert (ROOT / "environment.yml").is_file() and "pip install" in (ROOT / "postBuild").read_text()
