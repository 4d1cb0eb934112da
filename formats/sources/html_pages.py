"""OCR pages from HTML: each page rendered by headless Chromium, with the box of each visible text line.

The Qwen-VL paper (§3.2 and its appendix on stage-2 data) makes OCR data from Common Crawl HTML pages
rendered with their text locations, and filters them as its PDF pages (formats/sources/pdf.py). Here:

- input: `.html`/`.htm` files (key: the path), or WARC files (`.warc`, `.warc.gz`, Common Crawl's
  format, read with warcio): each `response` record whose HTTP Content-Type is HTML (key: its
  WARC-Target-URI); request, metadata and other records are not pages and are skipped.
- rendering: Chromium through Playwright, one fresh browser context a page with JavaScript off,
  service workers blocked and every request routed: the page's own bytes are served from the file or
  record at one fixed address (http://page.invalid/), every other request (images, stylesheets,
  fonts, frames, a meta refresh) is aborted, and host names do not resolve (`--host-resolver-rules`)
  should anything get past the route. So a page is drawn with its inline styles only and nothing
  leaves the machine. Bytes with no declared charset (no HTTP charset) that are valid UTF-8 are served
  as UTF-8 (Chromium's default would be windows-1252); otherwise Chromium decodes as the page says.
  The viewport is `viewport_width` x `viewport_height` CSS px at device scale 1 (a CSS px is an image
  px), then grown to the document's height up to `max_height_px`; the image is that viewport, the page
  below it cut off. Each page has `timeout_ms` to load and be shot.
- lines: measured in the page by formats/sources/html_lines.js (its header says how): visible text
  nodes, Range.getClientRects per fragment, pieces of one block on one rendered line joined; boxes as
  axis-aligned quads, clockwise from the top-left; top to bottom, then left to right. A line partly
  outside the image is left out. Not lines: text drawn by CSS (::before/::after content, list markers),
  text in frames (their sources are blocked; `srcdoc` frames are drawn but not read), text drawn as
  images. Right-to-left text is read as pieces that go back to the left, so each word is a line.

Rejects: `file_unreadable` (no file, or a WARC that is not one), `record_unreadable` (a WARC record
cut off or malformed: the rest of the file is lost), `record_not_html`, `http_not_ok` (not 2xx); per
page: `page_timeout`, `page_unreadable` (the browser fails: a crashed tab), `page_no_text`, then
`page_too_few_chars` / `page_too_many_chars`, `page_private_use` and `page_unmapped_chars` (U+FFFD:
here bytes not in the page's charset) as for PDF pages (pdf.check_text without its Latin Extended
rule: Latin Extended letters are ordinary web text). No `image_too_small`: every image is at least
the viewport.

The browser: started on first use, once per thread (Playwright's sync API belongs to the thread that
starts it; a Beam worker runs a bundle in one thread), then reused for every file and page the thread
reads, and started again if it died. It is closed at exit for the main thread; a worker thread's
browser ends with the process (Playwright's driver closes it when its pipe closes).
"""

import atexit
import dataclasses
import posixpath
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as BrowserError
from playwright.sync_api import TimeoutError as BrowserTimeout
from warcio.archiveiterator import ArchiveIterator

from formats.example import OCR, Example, Invalid, Region
from formats.files import open_file
from formats.reasons import (
    FILE_UNREADABLE,
    HTTP_NOT_OK,
    PAGE_NO_TEXT,
    PAGE_TIMEOUT,
    PAGE_UNREADABLE,
    RECORD_NOT_HTML,
    RECORD_UNREADABLE,
)
from formats.sources.pdf import IMAGE_FORMATS, check_text
from formats.sources.records import error_text, file_name

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package (the Makefile installs it); never a download
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND")
PAGE_URL = "http://page.invalid/"  # where a page's own bytes are served (.invalid never resolves: RFC 2606)
HTML_TYPES = ("text/html", "application/xhtml+xml")
WARC_FILES = (".warc", ".warc.gz")
_LINES_JS = (Path(__file__).parent / "html_lines.js").read_text()


@dataclasses.dataclass(frozen=True)
class HtmlConfig:
    """How pages are rendered and which are kept. The paper publishes no values: these are ours."""

    viewport_width: int = 1280  # CSS px = image px: a common desktop width
    viewport_height: int = 720  # the screen a page is laid out in; the image's least height
    max_height_px: int = 2048  # a taller page is cut here
    image_format: str = "png"  # "png" (lossless, sharp text) or "jpeg"
    jpeg_quality: int = 90
    timeout_ms: int = 10_000  # per page, loading and screenshot together
    min_chars: int = 10  # non-space characters of the page's lines (as PdfConfig)
    max_chars: int = 1800


_threads = threading.local()


def browser() -> Browser:
    """This thread's Chromium, started on first use and again if it has died."""
    running = getattr(_threads, "browser", None)
    if running is None or not running.is_connected():
        if running is not None:
            _threads.playwright.stop()
        _threads.playwright = sync_playwright().start()
        _threads.browser = _threads.playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
    return _threads.browser


@atexit.register
def _stop() -> None:
    """At exit (in the main thread): stop the main thread's Playwright, which closes its browser."""
    if getattr(_threads, "playwright", None) is not None:
        _threads.playwright.stop()


def served_type(body: bytes, content_type: str) -> str:
    """The Content-Type a page's bytes are served with: as declared, plus charset=utf-8 where no charset
    is declared and the bytes are valid UTF-8."""
    if "charset=" in content_type.lower():
        return content_type
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return content_type
    return f"{content_type}; charset=utf-8"


@contextmanager
def loaded_page(body: bytes, content_type: str = "text/html", config: HtmlConfig = HtmlConfig()) -> Iterator[tuple[Page, list[str], float]]:
    """(page, blocked, deadline): the bytes loaded in a fresh context of this thread's browser, at the
    viewport's width and the document's height (within the config's limits); `blocked` lists the URLs of
    the requests the page made, each aborted; `deadline` is time.monotonic()'s when its time is up.
    Raises Playwright's TimeoutError or Error."""
    deadline = time.monotonic() + config.timeout_ms / 1000
    context = browser().new_context(java_script_enabled=False, service_workers="block", accept_downloads=False, device_scale_factor=1,
                                    viewport={"width": config.viewport_width, "height": config.viewport_height})
    blocked, served = [], []

    def route(request_route):
        if request_route.request.url == PAGE_URL and not served:
            served.append(PAGE_URL)
            request_route.fulfill(status=200, body=body, content_type=served_type(body, content_type))
        else:
            blocked.append(request_route.request.url)
            request_route.abort("aborted")  # ERR_ABORTED: a blocked navigation (meta refresh) leaves the page as it is

    try:
        context.route("**/*", route)
        page = context.new_page()
        page.goto(PAGE_URL, wait_until="load", timeout=config.timeout_ms)
        height = min(max(page.evaluate("(document.scrollingElement || document.documentElement).scrollHeight"), config.viewport_height), config.max_height_px)
        if height != config.viewport_height:
            page.set_viewport_size({"width": config.viewport_width, "height": height})
        yield page, blocked, deadline
    finally:
        context.close()


def page_lines(page: Page) -> list[tuple[str, Region]]:
    """(text, quad in image px) of each visible text line in the page's viewport, top to bottom."""
    size = page.viewport_size
    lines = []
    for text, x1, y1, x2, y2 in page.evaluate(_LINES_JS, [size["width"], size["height"]]):
        x1, y1, x2, y2 = (round(v, 2) for v in (x1, y1, x2, y2))
        lines.append((text, Region(quad=((x1, y1), (x2, y1), (x2, y2), (x1, y2)))))
    return lines


def page_example(body: bytes, content_type: str, source: str, key: str, image: str, config: HtmlConfig = HtmlConfig()) -> Example | Invalid:
    """One HTML page as an OCR Example (screenshot, size, lines with pixel quads) or an Invalid with its
    reason. A browser that cannot start raises: that is the machine's fault, not the page's."""
    browser()
    try:
        with loaded_page(body, content_type, config) as (page, _, deadline):
            lines = page_lines(page)
            if not lines:
                return Invalid(source, key, PAGE_NO_TEXT, "no visible text line")
            failed = check_text("\n".join(text for text, _ in lines), config.min_chars, config.max_chars, latin_extended=False)
            if failed:
                return Invalid(source, key, *failed)
            quality = {"quality": config.jpeg_quality} if config.image_format == "jpeg" else {}
            left_ms = max(1, (deadline - time.monotonic()) * 1000)  # a timeout of 0 would mean none
            data = page.screenshot(type=config.image_format, timeout=left_ms, **quality)
            size = page.viewport_size
    except BrowserTimeout as e:
        return Invalid(source, key, PAGE_TIMEOUT, f"over {config.timeout_ms} ms: {e.message.splitlines()[0]}")
    except BrowserError as e:  # a crashed tab, a page the browser cannot take
        return Invalid(source, key, PAGE_UNREADABLE, e.message.splitlines()[0])
    return Example(OCR, source, key, image=image, image_bytes=data, width=size["width"], height=size["height"], lines=tuple(lines))


def _image(source: str, path: str, number: int, config: HtmlConfig) -> str:
    return posixpath.join(source, file_name(path), f"{number}.{IMAGE_FORMATS[config.image_format]}")


def read_warc(path: str, source: str = "html", config: HtmlConfig = HtmlConfig()) -> Iterator[Example | Invalid]:
    """The HTML responses of one WARC file (gzipped or not, local or remote), each an Example or an
    Invalid; keys are the records' target URIs, images SOURCE/FILE/N.png with N the record's number in
    the file (from 1, every record counted)."""
    try:
        stream = open_file(path, compression=None)  # warcio takes the gzip members apart itself
    except OSError as e:
        yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
        return
    with stream:
        number, records = 0, iter(ArchiveIterator(stream))
        while True:
            try:
                record = next(records, None)
                if record is None:
                    return
                if record.format != "warc":  # warcio also reads ARC, and takes many a text line for an ARC header
                    raise ValueError(f"not a WARC record (read as {record.format})")
                number += 1
                if record.rec_type != "response":
                    continue
                key = record.rec_headers.get_header("WARC-Target-URI") or f"{path}:{number}"
                status = record.http_headers.get_statuscode() if record.http_headers else None
                content_type = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
                body = record.content_stream().read()
            except Exception as e:  # warcio's ArchiveLoadFailed, a cut-off gzip member, a broken HTTP head
                if number == 0:
                    yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
                else:  # the record after the last one read
                    yield Invalid(source, f"{path}:{number + 1}", RECORD_UNREADABLE, error_text(e))
                return
            if not (status or "").startswith("2"):
                yield Invalid(source, key, HTTP_NOT_OK, f"HTTP status {status}")
            elif content_type.split(";")[0].strip().lower() not in HTML_TYPES:
                yield Invalid(source, key, RECORD_NOT_HTML, f"Content-Type {content_type or 'missing'}")
            else:
                yield page_example(body, content_type, source, key, _image(source, path, number, config), config)


def read_html(path: str, source: str = "html", config: HtmlConfig = HtmlConfig()) -> Iterator[Example | Invalid]:
    """One file: a WARC (.warc, .warc.gz) through read_warc, else one HTML page (key: the path; image
    SOURCE/FILE/1.png)."""
    if config.image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {config.image_format!r}")
    if path.lower().endswith(WARC_FILES):
        yield from read_warc(path, source, config)
        return
    try:
        with open_file(path) as f:
            body = f.read()
    except OSError as e:
        yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
        return
    yield page_example(body, "text/html", source, path, _image(source, path, 1, config), config)

