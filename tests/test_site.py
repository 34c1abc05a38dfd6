"""The rendered site of the notebooks: built from the committed outputs, no broken image or link.

``scripts/build-site`` builds it with Jupyter Book (warnings are errors, so a cross-reference
to a missing page already fails the build). This test then serves the site over HTTP, opens
every page in the system Chromium (as tests/test_browser.py does, never a downloaded browser)
and checks what a student reading it would hit:

- every ``<img>`` is loaded and decoded (``naturalWidth > 0``), and none is fetched from
  elsewhere (the site hotlinks nothing: it must work offline, in a classroom);
- every link within the site leads to a page that exists, and a ``#fragment`` to an element
  with that id; links to other sites are counted, not fetched (CI has no internet);
- each notebook's page shows as many charts as the committed notebook has PNG outputs: the site
  shows the outputs, it does not re-execute (or drop) them.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import test_browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGE_TIMEOUT_MS = 30_000

# Every <img> on the page: where it comes from and whether the browser decoded it.
IMAGES_JS = """() => [...document.images].map(img => ({
  src: img.currentSrc || img.src, loaded: img.complete && img.naturalWidth > 0,
  output: !!img.closest('.cell_output'),
}))"""


class Links(HTMLParser):
    """The ``href`` of every ``<a>`` and the ``id`` of every element of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "a" and attributes.get("href"):
            self.hrefs.append(attributes["href"])


@functools.cache
def parsed(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text(encoding="utf-8"))
    return links


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("site") / "html"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-site"), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"the site did not build:\n{result.stdout}\n{result.stderr}"
    print(f"site built in {time.monotonic() - started:.1f} s")
    return output


@pytest.fixture(scope="module")
def served(site):
    """The site over HTTP on a free loopback port: links resolve as on a real web server."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def pages(site: Path) -> list[Path]:
    """Every page a reader can reach: the HTML files, without Sphinx's own genindex/search."""
    skipped = {"genindex.html", "search.html"}
    return sorted(
        p
        for p in site.rglob("*.html")
        if p.name not in skipped and not p.relative_to(site).parts[0].startswith("_")
    )


def test_the_site_has_a_page_per_notebook(site):
    built = {p.relative_to(site).as_posix() for p in pages(site)}
    expected = {f"notebooks/{p.stem}.html" for p in NOTEBOOKS} | {"index.html", "README.html"}
    assert expected <= built
    index = (site / "index.html").read_text()
    for path in NOTEBOOKS:
        assert f'href="notebooks/{path.stem}.html"' in index, f"{path.stem} is not in the contents"


def test_every_link_within_the_site_resolves(site):
    broken, external = [], set()
    for page in pages(site):
        for href in parsed(page).hrefs:
            target, fragment = resolve(site, page, href)
            if target is None:
                if urlsplit(href).scheme in ("http", "https", "mailto"):
                    external.add(href)
                continue
            where = f"{page.relative_to(site)}: {href}"
            if not target.is_file():
                broken.append(f"{where} (no such file)")
            elif fragment and target.suffix == ".html" and fragment not in parsed(target).ids:
                broken.append(f"{where} (no element with id {fragment!r})")
    assert not broken, "broken links on the site:\n" + "\n".join(broken)
    print(f"{len(external)} distinct links to other sites, not fetched (no internet in CI)")


def resolve(site: Path, page: Path, href: str) -> tuple[Path | None, str]:
    """The file a site-relative ``href`` on ``page`` points at, and its fragment."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None, ""
    if not parts.path:  # "#section": this page
        return page, unquote(parts.fragment)
    target = (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


chromium = test_browser.chromium  # the fixture: the system Chromium, else skip (in CI, fail)


@pytest.fixture(scope="module")
def browser(chromium):
    with test_browser.launched(chromium) as instance:
        yield instance


def committed_charts(path: Path) -> int:
    nb = json.loads(path.read_text())
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    )


def test_every_image_on_every_page_loads_and_charts_match_the_notebooks(site, served, browser):
    context = browser.new_context()
    page = context.new_page()
    foreign: list[str] = []
    page.on(
        "request",
        lambda request: (
            foreign.append(request.url)
            if not request.url.startswith((served, "data:", "blob:"))
            else None
        ),
    )
    problems, counted = [], 0
    started = time.monotonic()
    try:
        for path in pages(site):
            name = path.relative_to(site).as_posix()
            page.goto(urljoin(served + "/", name), wait_until="load", timeout=PAGE_TIMEOUT_MS)
            images = page.evaluate(IMAGES_JS)
            counted += len(images)
            problems += [f"{name}: image {img['src']} did not load" for img in images
                         if not img["loaded"]]  # fmt: skip
            notebook = ROOT / "notebooks" / f"{Path(name).stem}.ipynb"
            if re.fullmatch(r"notebooks/[^/]+\.html", name) and notebook.is_file():
                shown, want = sum(img["output"] for img in images), committed_charts(notebook)
                if shown != want:
                    problems.append(f"{name}: {shown} charts shown, the notebook has {want}")
    finally:
        context.close()
    assert counted > 0, "no images at all: the notebooks' charts are missing"
    assert not foreign, "the site fetches from elsewhere (it must work offline):\n" + "\n".join(
        sorted(set(foreign))
    )
    assert not problems, "\n".join(problems)
    spent = time.monotonic() - started
    print(f"{len(pages(site))} pages, {counted} images checked in {spent:.1f} s")
