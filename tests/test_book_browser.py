"""The built book as a reader sees it, in headless Chromium.

Every page of the book (the chapters of ``book.yml``, its intro and appendix) is served
over HTTP from the built HTML, as a host would serve it, with every other host made
unreachable, so the test proves that the book works offline. For each page it checks
what a reader would see: the math typeset by the MathJax copy shipped with the book (no
raw TeX, no "Math input error"), every figure and animation present and loaded, the
solution cells collapsed, links to other pages and anchors of the book that resolve,
the Colab badge opening this chapter in the repository of ``book.yml``, no wide
equation or code running off the content column, the Colab set-up cell absent from the
page, and a silent browser console. Each chapter's first screen is saved as
``_build/screenshots/NN.png``.

Chromium is driven over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3
and 4), so the test needs nothing beyond the standard library and a Chromium binary
(Debian's ``chromium`` package; ``.ci/run`` installs it where it is missing). The test
skips, saying why, when no Chromium can be found; ``COURSE_CHROMIUM`` names one
explicitly.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = yaml.safe_load((ROOT / "book.yml").read_text())
SCREENSHOTS = ROOT / "_build" / "screenshots"
#: a laptop screen: what "the first screen" of a chapter means
VIEWPORT = (1280, 800)
#: seconds a page may take to load, typeset its math and decode its figures
PAGE_TIMEOUT = 60.0
#: the one external image a page may show: the Colab badge (offline it cannot load)
EXTERNAL_IMAGES = ("https://colab.research.google.com/assets/colab-badge.svg",)

CHAPTERS = [Path(c) for c in BOOK["chapters"]]
PAGES = [
    *(c.with_suffix(".html").as_posix() for c in CHAPTERS),
    *(f"{Path(p).stem}.html" for p in [BOOK["intro"], *BOOK.get("appendix", [])]),
]


def find_chromium() -> str | None:
    """``COURSE_CHROMIUM``, else the first Chromium or Chrome on ``PATH``."""
    named = os.environ.get("COURSE_CHROMIUM")
    if named:
        return shutil.which(named)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class DevToolsError(RuntimeError):
    """A DevTools command that Chromium answered with an error, or not at all."""


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe, with one tab.

    ``send`` issues a command to the tab and waits for its answer; events of the tab are
    collected in ``events`` (``(method, params)``) until ``clear_events``.
    """

    def __init__(self, executable: str, viewport: tuple[int, int]) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="course-chromium-")
        to_browser_r, self._to_browser = os.pipe()  # non-inheritable: only the dup2s below
        self._from_browser, from_browser_w = os.pipe()  # reach the browser
        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",  # the protocol on fds 3 (commands) and 4 (answers)
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            # offline: every host name fails to resolve (the book is served on 127.0.0.1)
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={self.profile.name}",
            f"--window-size={viewport[0]},{viewport[1]}",
            "about:blank",
        ]
        self.pid = os.posix_spawn(
            executable,
            args,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
                (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
            ],
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._event_cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=viewport[0],
            height=viewport[1],
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._answers.get(message["id"])
                    if box is not None:
                        box.put(message)
                elif message.get("sessionId") == self.session:
                    with self._event_cond:
                        self.events.append((message["method"], message.get("params", {})))
                        self._event_cond.notify_all()

    def send(self, method: str, timeout: float = PAGE_TIMEOUT, **params: Any) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            n = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._answers[n] = box
        message: dict[str, Any] = {"id": n, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = box.get(timeout=timeout)
        except queue.Empty:
            raise DevToolsError(f"{method}: no answer from Chromium in {timeout:.0f} s") from None
        finally:
            with self._lock:
                del self._answers[n]
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def clear_events(self) -> None:
        with self._event_cond:
            self.events.clear()

    def wait_for_event(self, method: str, timeout: float = PAGE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._event_cond:
            while not any(m == method for m, _ in self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DevToolsError(f"no {method} within {timeout:.0f} s")
                self._event_cond.wait(left)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"JavaScript failed: {text}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event (events start afresh)."""
        self.clear_events()
        answer = self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise DevToolsError(f"{url}: {answer['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (DevToolsError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._to_browser)
        self._reader.join(timeout=5)
        os.close(self._from_browser)
        self.profile.cleanup()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served_book(book_html: Path) -> Iterator[str]:
    """The built book served over HTTP on 127.0.0.1 (file:// pages may not load fonts)."""
    handler = functools.partial(_QuietHandler, directory=str(book_html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (install Debian's `chromium` package, as .ci/run does, "
            "or name a binary in COURSE_CHROMIUM): the book was not checked in a browser"
        )
    chromium = Chromium(executable, VIEWPORT)
    yield chromium
    chromium.close()


#: Run in the page once MathJax and the images are done: everything the checks need.
INSPECT = r"""
(async () => {
  const deadline = Date.now() + %(timeout_ms)d;
  if (window.MathJax) {
    while (!(MathJax.startup && MathJax.startup.promise) && Date.now() < deadline) {
      await new Promise(r => setTimeout(r, 50));
    }
    await MathJax.startup.promise;
  }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
  // the matplotlib animations show their first frame from a timer
  await new Promise(r => setTimeout(r, 200));
  const article = document.querySelector('article.bd-article') || document.body;
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  // text a reader sees outside code and typeset math
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .cell_input, .cell_output')
       .forEach(e => e.remove());
  const mathNodes = [...document.querySelectorAll('.math')];  // the navigation's too
  // wide things a reader cannot reach: cut off by a box that hides its overflow, or
  // running past the content column; a box that scrolls sideways is what we want
  const column = article.getBoundingClientRect();
  const describe = el => `${el.tagName.toLowerCase()}.${[...el.classList].join('.')}: ` +
                         (el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 60);
  const overflowing = [];
  const wide = 'div.math, mjx-container[display="true"], pre, table, .cell_output img, .output';
  for (const el of article.querySelectorAll(wide)) {
    if (!visible(el)) continue;
    let box = null;  // the nearest box that scrolls or clips sideways
    for (let e = el; e && e !== article && !box; e = e.parentElement) {
      if (getComputedStyle(e).overflowX !== 'visible') box = e;
    }
    const ox = box ? getComputedStyle(box).overflowX : 'visible';
    if (ox === 'auto' || ox === 'scroll') continue;
    let problem = null;
    if (box && box.scrollWidth > box.clientWidth + 1) {
      problem = `${box.scrollWidth - box.clientWidth} px cut off`;
    } else {
      const right = (box || el).getBoundingClientRect().right;
      if (right > column.right + 1) {
        problem = `${Math.round(right - column.right)} px past the column`;
      }
    }
    if (problem) overflowing.push(`${problem}: ${describe(el)}`);
  }
  const anims = [...document.querySelectorAll('.animation')].map(div => {
    const img = div.querySelector('img');
    const slider = div.querySelector('input.anim-slider');
    const name = img ? 'anim' + img.id.replace('_anim_img', '') : '';
    const buttons = [...div.querySelectorAll('.anim-buttons button')];
    // an icon: Font Awesome's SVG (the theme's fontawesome.js) or a glyph from its CSS
    const hasIcon = b => !!b.querySelector('svg') || [...b.querySelectorAll('i')].some(
        i => !['none', 'normal', '""'].includes(getComputedStyle(i, '::before').content));
    return {
      loaded: !!img && img.complete && img.naturalWidth > 0,
      frames: slider ? parseInt(slider.max) + 1 : 0,
      player: !!(name && window[name]),
      buttons: buttons.length,
      iconless: buttons.filter(b => !hasIcon(b)).length,
    };
  });
  const solutions = [...article.querySelectorAll('.tag_solution')].map(cell => {
    const details = cell.querySelector('details');
    const source = cell.querySelector('.cell_input');
    return {details: !!details, open: !!(details && details.open),
            sourceVisible: !!source && source.checkVisibility({contentVisibilityAuto: true,
                                                              visibilityProperty: true})};
  });
  return {
    url: location.href,
    title: document.title,
    text: prose.innerText,
    bodyText: document.body.innerText,
    mathjax: !!window.MathJax,
    mathNodes: mathNodes.length,
    untypeset: mathNodes.filter(m => !m.querySelector('mjx-container'))
                        .map(m => m.textContent.slice(0, 80)),
    mathErrors: [...document.querySelectorAll('mjx-merror')]
                .map(m => m.getAttribute('data-mjx-error') || m.textContent),
    mjx: document.querySelectorAll('mjx-container').length,
    images: [...document.images].map(img => ({src: img.currentSrc || img.src,
        loaded: img.complete && img.naturalWidth > 0, animation: !!img.closest('.animation')})),
    anims,
    solutions,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    colab: [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map(a => a.href),
    pageScroll: document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth,
    overflowing,
    colabCell: document.body.innerHTML.includes('google.colab'),
  };
})()
"""


def inspect_page(browser: Chromium, url: str) -> dict[str, Any]:
    browser.open(url)
    report = browser.evaluate(INSPECT % {"timeout_ms": int(PAGE_TIMEOUT * 1000)})
    report["console"] = console_errors(browser.events)
    return report


def console_errors(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Errors the console showed: console.error/assert, uncaught exceptions, and browser
    log entries (failed loads, CSP, ...) at level error."""
    found = []
    for method, p in events:
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            found.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            found.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            e = p["entry"]
            found.append(f"{e['source']}: {e['text']} {e.get('url', '')}".strip())
    return found


@pytest.fixture(scope="module")
def reports(browser: Chromium, served_book: str, book_html: Path) -> dict[str, dict[str, Any]]:
    """Every page of the book, inspected once; chapters' first screens saved."""
    found = {}
    t0 = time.perf_counter()
    for page in PAGES:
        if not (book_html / page).is_file():
            continue  # test_every_page_is_built says so
        found[page] = inspect_page(browser, served_book + page)
        if page.startswith("chapters/"):
            browser.evaluate("window.scrollTo(0, 0)")
            number = Path(page).stem.split("_")[0]
            browser.screenshot(SCREENSHOTS / f"{number}.png")
    print(f"browser: {len(PAGES)} pages inspected in {time.perf_counter() - t0:.1f} s")
    return found


def page_report(reports: dict[str, dict[str, Any]], page: str) -> dict[str, Any]:
    if page not in reports:
        pytest.fail(f"{page}: named in book.yml but not built")
    return reports[page]


def local_target(url: str, base: str, html: Path) -> tuple[Path, str] | None:
    """The file and fragment a link into the served book points at (None: elsewhere)."""
    if not url.startswith(base):
        return None
    parts = urllib.parse.urlsplit(url)
    rel = urllib.parse.unquote(parts.path).removeprefix(urllib.parse.urlsplit(base).path)
    path = html / rel
    if rel == "" or rel.endswith("/"):
        path = path / "index.html"
    return path, urllib.parse.unquote(parts.fragment)


@functools.cache
def ids_in(path: Path) -> frozenset[str]:
    import re

    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def staged_notebook(book_html: Path, chapter: Path) -> nbformat.NotebookNode:
    return nbformat.read(book_html.parents[1] / "src" / chapter, as_version=4)


def animations_in(nb: nbformat.NotebookNode) -> int:
    return sum(
        "Animation(" in "".join(out.get("data", {}).get("text/html", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


pytestmark = [pytest.mark.book, pytest.mark.slow]


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_offline(reports, page):
    r = page_report(reports, page)
    assert r["mathjax"] or not r["mathNodes"], f"{page}: the page has math but no MathJax"
    assert "Math input error" not in r["bodyText"], f"{page}: MathJax could not parse some TeX"
    assert not r["mathErrors"], f"{page}: MathJax errors {r['mathErrors'][:3]}"
    assert not r["untypeset"], f"{page}: math left as raw TeX: {r['untypeset'][:3]}"
    for raw in ("$$", "\\(", "\\[", "\\begin{"):
        assert raw not in r["text"], f"{page}: raw TeX {raw!r} is visible in the prose"
    if page.startswith("chapters/"):
        assert r["mathNodes"] > 0 and r["mjx"] >= r["mathNodes"], f"{page}: no typeset math"


@pytest.mark.parametrize("page", PAGES)
def test_figures_and_animations_load(reports, page, book_html):
    r = page_report(reports, page)
    broken = [i["src"][:100] for i in r["images"] if not i["loaded"]]
    assert set(broken) <= set(EXTERNAL_IMAGES), f"{page}: images that did not load: {broken}"
    if not page.startswith("chapters/"):
        return
    chapter = Path(page).with_suffix(".ipynb")
    nb = staged_notebook(book_html, chapter)
    figures = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    shown = [i for i in r["images"] if i["loaded"] and not i["animation"]]
    assert len(shown) >= figures > 0, f"{page}: {figures} figures executed, {len(shown)} shown"
    assert len(r["anims"]) == animations_in(nb), f"{page}: animations missing"
    for a in r["anims"]:
        assert a["loaded"] and a["player"] and a["frames"] > 1, f"{page}: a broken animation {a}"
        assert a["buttons"] > 0 and a["iconless"] == 0, f"{page}: animation buttons lack icons"


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_solutions_are_collapsed(reports, page):
    solutions = page_report(reports, page)["solutions"]
    assert solutions, f"{page}: no solution cells found"
    for s in solutions:
        assert s["details"] and not s["open"] and not s["sourceVisible"], (
            f"{page}: a solution is shown open: {s}"
        )


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(reports, page, served_book, book_html):
    r = page_report(reports, page)
    bad = []
    for url in r["links"]:
        target = local_target(url, served_book, book_html)
        if target is None:
            continue
        path, fragment = target
        if not path.is_file():
            bad.append(f"{url} (no such page)")
        elif fragment and path.suffix == ".html" and fragment not in ids_in(path):
            bad.append(f"{url} (no such anchor)")
    assert not bad, f"{page}: broken links {bad[:5]}"
    if page.startswith("chapters/"):
        pages = {local_target(u, served_book, book_html) for u in r["links"]} - {None}
        files = {p.relative_to(book_html).as_posix() for p, _ in pages}  # type: ignore[union-attr]
        assert "bibliography.html" in files, f"{page}: no citation links to the bibliography"
        others = {f for f in files if f.startswith("chapters/") and f != page}
        assert others, f"{page}: no link to another chapter"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.stem)
def test_colab_badge_opens_this_chapter_from_book_yml(reports, chapter):
    r = page_report(reports, chapter.with_suffix(".html").as_posix())
    repo = BOOK["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
    branch = BOOK["repository"].get("branch", "main")
    expected = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{chapter.as_posix()}"
    assert r["colab"], f"{chapter}: no Colab badge"
    assert set(r["colab"]) == {expected}, f"{chapter}: Colab links {set(r['colab'])}"


#: requests that are the browser's, not the book's: a missing site icon is not an error
#: of the book (a host serves its own), and offline the Colab badge cannot load
NOT_THE_BOOK = ("/favicon.ico", *EXTERNAL_IMAGES)


@pytest.mark.parametrize("page", PAGES)
def test_console_is_clean(reports, page):
    errors = [
        e for e in page_report(reports, page)["console"] if not any(x in e for x in NOT_THE_BOOK)
    ]
    assert not errors, f"{page}: console errors {errors[:5]}"


@pytest.mark.parametrize("page", PAGES)
def test_nothing_runs_off_the_content_column(reports, page):
    r = page_report(reports, page)
    assert r["pageScroll"] <= 0, f"{page}: the page scrolls {r['pageScroll']} px sideways"
    assert not r["overflowing"], f"{page}: {r['overflowing'][:5]}"


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_colab_setup_cell_is_not_in_the_book(reports, page):
    assert not page_report(reports, page)["colabCell"], f"{page}: the Colab set-up cell is shown"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_built(book_html, page):
    assert (book_html / page).is_file(), f"{page}: named in book.yml but not built"


def test_every_chapter_has_a_first_screen_screenshot(reports):
    for chapter in CHAPTERS:
        shot = SCREENSHOTS / f"{chapter.stem.split('_')[0]}.png"
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot


def test_the_layout_check_sees_what_runs_off_the_column(browser, tmp_path):
    """The check itself: a box that hides a wide equation, and code running past the
    column, are reported; a wide equation in a box that scrolls is not."""
    page = tmp_path / "wide.html"
    page.write_text(
        '<html><body><article class="bd-article" style="width: 300px">'
        '<div class="math" style="overflow: hidden"><span style="display: inline-block; '
        'width: 600px">cut</span></div>'
        '<pre style="overflow: visible; width: 500px">past</pre>'
        '<div style="overflow-x: auto"><div class="math" style="width: 600px">fine</div></div>'
        "</article></body></html>"
    )
    report = inspect_page(browser, page.as_uri())
    found = sorted(report["overflowing"])
    assert len(found) == 2, found
    assert found[0].startswith("200 px past the column: pre") and "past" in found[0]
    assert found[1].startswith("300 px cut off: div.math") and "cut" in found[1]
