"""formats/sources/html_pages.py on pages and WARC files written here, rendered by Debian's Chromium
(the Makefile installs it): line boxes against the positions the CSS sets and the ink drawn, wrapping,
hidden text, network isolation, timeouts, WARC records and every reject. Fonts: DejaVu Sans and Sans
Mono (fonts-dejavu-core) and WenQuanYi Zen Hei (fonts-wqy-zenhei), all installed by the Makefile."""

import http.server
import io
import threading
import time

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image
from playwright.sync_api import Error as BrowserError
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from formats.boxes import normalize_example
from formats.example import OCR, Example, Invalid
from formats.sources import html_pages
from formats.sources.html_pages import HtmlConfig, loaded_page, page_example, page_lines, read_html, served_type
from pipelines.stage2 import source_files

SANS = "font: 20px 'DejaVu Sans'; margin: 0"
DEJAVU_SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def page(body: str, style: str = SANS) -> bytes:
    return f'<!doctype html><html><body style="{style}">{body}</body></html>'.encode()


def lines_of(html: bytes, config: HtmlConfig = HtmlConfig()):
    with loaded_page(html, config=config) as (loaded, _, _):
        return page_lines(loaded)


def texts(html: bytes) -> list[str]:
    return [text for text, _ in lines_of(html)]


def advance(text: str, size: float) -> float:
    """The width of a line of DejaVu Sans at `size` px: the sum of its glyphs' advances (no kerning)."""
    font = TTFont(DEJAVU_SANS)
    cmap, metrics, scale = font.getBestCmap(), font["hmtx"].metrics, size / font["head"].unitsPerEm
    return sum(metrics[cmap[ord(ch)]][0] for ch in text) * scale


def ink_columns(image_bytes: bytes, top: int, bottom: int) -> tuple[int, int]:
    """The first and last (exclusive) columns with dark pixels between rows top and bottom."""
    pixels = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("L"))[top:bottom]
    xs = np.nonzero((pixels < 128).any(axis=0))[0]
    return int(xs.min()), int(xs.max()) + 1


def test_positioned_lines_have_their_boxes():
    html = page('<div style="position:absolute; left:100px; top:50px">Hello world</div>'
                '<div style="position:absolute; left:300px; top:200px">Second <span>line</span> here</div>'
                '<div style="position:absolute; left:40px; top:400px; font-size:40px">Big text</div>')
    example = page_example(html, "text/html", "cc-html", "k", "cc-html/a.html/1.png")
    assert (example.task, example.source, example.key, example.image) == (OCR, "cc-html", "k", "cc-html/a.html/1.png")
    assert (example.width, example.height) == (1280, 720) and Image.open(io.BytesIO(example.image_bytes)).size == (1280, 720)
    assert Image.open(io.BytesIO(example.image_bytes)).format == "PNG"
    assert [t for t, _ in example.lines] == ["Hello world", "Second line here", "Big text"]
    # DejaVu Sans's content area is 1.164 em high (ascender 0.928 + descender 0.236), from the line's top
    for (text, region), (left, top, size) in zip(example.lines, [(100, 50, 20), (300, 200, 20), (40, 400, 40)]):
        (x1, y1), (x2, _), (_, y2), (x4, y4) = region.quad
        assert (x1, x4) == (left, left) and abs(y1 - top) <= 2 and abs(y2 - (top + 1.164 * size)) <= 2 and y4 == y2
        assert abs(x2 - (left + advance(text, size))) <= 2
        ink_left, ink_right = ink_columns(example.image_bytes, round(y1), round(y2))
        assert x1 <= ink_left < ink_right <= x2 + 1, (region.quad, ink_left, ink_right)  # the ink is in the box
    assert not isinstance(normalize_example(example), Invalid)  # clockwise, inside: the OCR task takes it


def test_wrapped_paragraph_gives_one_line_per_rendered_line():
    # DejaVu Sans Mono: every character 0.602 em wide, so 10ch holds "aaaa bbbb" and breaks before "cccc"
    html = page('<p style="width:10ch; line-height:30px; margin:0">aaaa bbbb cccc dddd ee <i>ff</i>gg</p>'
                '<p style="width:3em; font-family:\'WenQuanYi Zen Hei\'; margin:20px 0 0 0">中文页面的文字足够多</p>',
                style="font: 20px 'DejaVu Sans Mono'; margin: 0")
    lines = lines_of(html)
    assert [t for t, _ in lines] == ["aaaa bbbb", "cccc dddd", "ee ffgg", "中文页", "面的文", "字足够", "多"]
    tops = [region.quad[0][1] for _, region in lines[:3]]
    assert tops[1] - tops[0] == pytest.approx(30, abs=0.5) and tops[2] - tops[1] == pytest.approx(30, abs=0.5)
    assert lines[0][1].quad[1][0] == pytest.approx(9 * 0.602 * 20, abs=1)  # "aaaa bbbb": 9 monospace cells
    assert [region.quad[1][0] - region.quad[0][0] for _, region in lines[3:6]] == pytest.approx([60, 60, 60], abs=1)


def test_pieces_of_one_block_apart_are_lines_of_their_own():
    html = page('<div>Left words <span style="position:relative; top:40px">lower down</span></div>'
                '<div style="margin-top:60px">Near <span style="margin-left:300px">far right</span></div>'
                '<div style="margin-top:20px">One <b>bold</b> <sup>up</sup> line</div>')
    assert texts(html) == ["Left words", "lower down", "Near", "far right", "One bold up line"]


def test_hidden_text_is_not_a_line():
    html = page('<p>Shown text</p><p style="display:none">display none</p><p style="visibility:hidden">visibility hidden</p>'
                '<p style="opacity:0">opacity zero</p><div style="display:none"><p>inside a hidden block</p></div><p hidden>hidden attribute</p>'
                '<p style="position:absolute; left:-900px">off to the left</p><p style="position:absolute; top:5000px">far below</p>'
                '<script>var never = "a script";</script><style>p { color: black }</style><p>Also <span style="visibility:hidden">not</span>shown</p>')
    assert texts(html) == ["Shown text", "Also shown"]


def test_a_page_cannot_reach_the_network():
    hits = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    html = (f'<!doctype html><meta http-equiv="refresh" content="0; url={url}/refresh"><link rel="stylesheet" href="{url}/style.css">'
            f'<body style="{SANS}; background: url({url}/background.png)"><img src="{url}/image.png"><iframe src="{url}/frame.html"></iframe>'
            f'<script src="{url}/script.js"></script><p>Still rendered here.</p></body>').encode()
    try:
        with loaded_page(html) as (loaded, blocked, _):
            time.sleep(0.5)  # the refresh fires once the page has loaded
            assert [t for t, _ in page_lines(loaded)] == ["Still rendered here."]
        example = page_example(html, "text/html", "html", "k", "i.png")
    finally:
        server.shutdown()
    # each URL the page tried, blocked (Chromium may ask for one twice, e.g. a stylesheet while the refresh fires)
    assert sorted(set(blocked)) == [f"{url}/{name}" for name in ("background.png", "frame.html", "image.png", "refresh", "style.css")]
    assert hits == []  # the scripts' source is not even asked for: JavaScript is off
    assert [t for t, _ in example.lines] == ["Still rendered here."]


def test_timeout_is_a_reject_not_a_hang():
    html = page("<p>" + "Many words on a long page. " * 20_000 + "</p>")
    started = time.monotonic()
    result = page_example(html, "text/html", "html", "k", "i.png", HtmlConfig(timeout_ms=1))
    assert time.monotonic() - started < 10
    assert (result.reason, result.detail.split(":")[0]) == ("page_timeout", "over 1 ms")
    assert texts(page("<p>The browser goes on after a timeout</p>")) == ["The browser goes on after a timeout"]


def test_tall_page_is_cut_at_max_height():
    html = page("".join(f'<p style="margin:0; height:100px">Line number {i}</p>' for i in range(30)))
    example = page_example(html, "text/html", "html", "k", "i.jpg", HtmlConfig(image_format="jpeg", max_height_px=1000))
    assert (example.width, example.height) == (1280, 1000) and Image.open(io.BytesIO(example.image_bytes)).format == "JPEG"
    assert [t for t, _ in example.lines] == [f"Line number {i}" for i in range(10)]
    short = page_example(page("<p>Short page, one line</p>"), "text/html", "html", "k", "i.png")
    assert (short.width, short.height) == (1280, 720)  # never less than the viewport


def test_page_rejects():
    config = HtmlConfig(max_chars=40)
    cases = [
        (page('<img src="x.png"><div style="height:300px; background:#333"></div>'), Invalid("s", "k", "page_no_text", "no visible text line")),
        (page("<p>Hi</p>"), Invalid("s", "k", "page_too_few_chars", "2 characters < 10")),
        (page("<p>" + "ten chars! " * 5 + "</p>"), Invalid("s", "k", "page_too_many_chars", "45 characters > 40")),
        (page("<p>icon \ue000 here and \U000f0001 there</p>"), Invalid("s", "k", "page_private_use", "U+E000, U+F0001")),
        (b'<meta charset="utf-8"><p>broken \xff\xfe bytes here</p>', Invalid("s", "k", "page_unmapped_chars", "2 x U+FFFD")),
    ]
    for html, expected in cases:
        assert page_example(html, "text/html", "s", "k", "i.png", config) == expected
    kept = page_example(page("<p>Zdzisław Łódź ǎ</p>"), "text/html", "s", "k", "i.png", config)
    assert [t for t, _ in kept.lines] == ["Zdzisław Łódź ǎ"]  # Latin Extended is ordinary web text


def test_charsets():
    assert served_type("héllo".encode(), "text/html") == "text/html; charset=utf-8"
    assert served_type("héllo".encode("cp1252"), "text/html") == "text/html"
    assert served_type("héllo".encode("cp1252"), "text/html; Charset=windows-1252") == "text/html; Charset=windows-1252"
    assert texts(page("<p>Crème brûlée 中文页面</p>")) == ["Crème brûlée 中文页面"]  # no charset declared: UTF-8
    assert texts('<meta charset="gbk"><p>中文页面的文字</p>'.encode("gbk")) == ["中文页面的文字"]
    assert texts("<p>Crème brûlée, café</p>".encode("cp1252")) == ["Crème brûlée, café"]  # Chromium's default


def response(writer, uri: str, body: bytes, content_type: str, status: str = "200 OK"):
    headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers))


def write_warc(path, gzip: bool = True) -> str:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzip)
        writer.write_record(writer.create_warc_record("http://a.example/", "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"),
                                                      warc_content_type="application/http; msgtype=request"))
        response(writer, "http://a.example/", page("<p>Hello from a record</p>"), "text/html; charset=utf-8")
        response(writer, "http://a.example/logo.png", b"\x89PNG\r\n\x1a\n", "image/png")
        response(writer, "http://a.example/old", b"", "text/html", status="301 Moved Permanently")
        response(writer, "http://b.example/", "<p>Crème brûlée, café au lait</p>".encode("cp1252"), "text/html; charset=windows-1252")
    return str(path)


@pytest.mark.parametrize("name,gzip", [("cc.warc.gz", True), ("cc.warc", False)])
def test_warc_file_gives_its_html_responses(tmp_path, name, gzip):
    path = write_warc(tmp_path / name, gzip)
    results = list(read_html(path, source="cc"))
    assert [type(r) for r in results] == [Example, Invalid, Invalid, Example]
    first, not_html, moved, second = results
    assert (first.key, first.image, [t for t, _ in first.lines]) == ("http://a.example/", f"cc/{name}/2.png", ["Hello from a record"])
    assert not_html == Invalid("cc", "http://a.example/logo.png", "record_not_html", "Content-Type image/png")
    assert moved == Invalid("cc", "http://a.example/old", "http_not_ok", "HTTP status 301")
    assert (second.key, second.image, [t for t, _ in second.lines]) == ("http://b.example/", f"cc/{name}/5.png", ["Crème brûlée, café au lait"])


def test_broken_files(tmp_path):
    whole = open(write_warc(tmp_path / "whole.warc", gzip=False), "rb").read()
    cut = tmp_path / "cut.warc"
    third = whole.index(b"WARC/1.", whole.index(b"WARC/1.", 1) + 1)
    cut.write_bytes(whole[: third + 40])  # the third record's header, cut off
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"not a WARC file at all\n" * 10)
    results = list(read_html(str(cut)))
    assert [type(r) for r in results] == [Example, Invalid]
    assert (results[1].key, results[1].reason) == (f"{cut}:3", "record_unreadable")
    assert list(read_html(str(junk))) == [Invalid("html", str(junk), "file_unreadable", "ValueError: not a WARC record (read as arc)")]
    [invalid] = read_html(str(tmp_path / "gone.html"))
    assert (invalid.key, invalid.reason) == (str(tmp_path / "gone.html"), "file_unreadable")


def test_folder_and_bad_format(tmp_path):
    (tmp_path / "b.html").write_bytes(page("<p>Page b in a folder</p>"))
    (tmp_path / "a.htm").write_bytes(page("<p>Page a in a folder</p>"))
    (tmp_path / "notes.txt").write_text("<p>not a page here</p>")
    keys = [(e.key, e.image) for f in source_files(str(tmp_path), "html") for e in read_html(f, source="web")]
    assert keys == [(str(tmp_path / "a.htm"), "web/a.htm/1.png"), (str(tmp_path / "b.html"), "web/b.html/1.png")]
    assert source_files(str(tmp_path / "none" / "*.html"), "html") == ()
    with pytest.raises(ValueError, match="image_format must be one of png, jpeg, not 'gif'"):
        list(read_html(str(tmp_path / "b.html"), config=HtmlConfig(image_format="gif")))


def test_a_browser_that_cannot_start_raises(monkeypatch):
    monkeypatch.setattr(html_pages, "CHROMIUM", "/nonexistent/chromium")
    raised = []
    thread = threading.Thread(target=lambda: raised.append(pytest.raises(BrowserError, page_example, page("<p>Some text here</p>"), "text/html", "s", "k", "i.png")))
    thread.start()
    thread.join()
    assert "/nonexistent/chromium" in str(raised[0].value)  # this thread's own browser: not a reject
