"""OCR pages per second on one core: synthetic pages (synthetic/documents.py), PDF pages
(formats/sources/pdf.py) and HTML pages (formats/sources/html_pages.py), each beside a baseline
measured in the same run.

    python bench/ocr_pages.py [--pages 60] [--pdf-pages 200] [--html-pages 100] [--seed 0]

Synthetic, per language: the whole page (layout: wrapping and drawing each line's ink; rendering: paper,
warp, shading, blur, noise; JPEG encoding), the layout alone, and the baseline: Pillow drawing the same
lines at the same places on a plain white page of the same size (in the language's first default font
at 20 px), encoded as JPEG at quality 90, without texture or distortion. The corpus is random words (English) or random common characters (Chinese) in
paragraphs of 20-80 words or 40-150 characters.

PDF: a PDF of A4 pages written with PyMuPDF (40 lines of ~70 characters a page, Helvetica, some lines
rotated), then read_pdf at 144 dpi as PNG and as JPEG, and the baseline: PyMuPDF's text extraction
(get_text("dict")) of each page without rendering. The page filters are set wide (max_chars 10,000)
so that every page is read whole.

HTML: a WARC of article-like pages written with warcio (a heading, six paragraphs of random words, a
two-column table, a link list; inline styles, one image that is blocked), then read_html as PNG and as
JPEG (a fresh browser context a page, lines measured, screenshot), the loading alone (context, routes,
page load, no lines, no screenshot), and the baseline: one reused
Chromium page, page.set_content + PNG screenshot of the same pages, no isolation and no lines. The
browser is started before timing. One process (Chromium's own processes beside it): pages/s is per
Python process, not strictly per core.
"""

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymupdf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from formats.example import Example  # noqa: E402
from formats.sources.html_pages import HtmlConfig, browser, loaded_page, read_html  # noqa: E402
from formats.sources.pdf import PdfConfig, read_pdf  # noqa: E402
from synthetic.documents import DocumentConfig, layout_page, synth_pages  # noqa: E402
from synthetic.fonts import default_fonts, pil_font  # noqa: E402

WORDS = ("the of and to in is for on that with as by at from this are be was it an or which have not has "
         "invoice total amount paid order shipping address street station market price item quantity receipt "
         "training model language vision image text page document table figure section results method data").split()
HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


def paragraphs(language: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    if language == "zh":
        return [(f"zh:{i}", "".join(rng.choice(HAN) for _ in range(rng.randint(40, 150))) + "。") for i in range(count)]
    return [(f"en:{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))).capitalize() + ".") for i in range(count)]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f} pages/s"


def bench_synthetic(language: str, pages: int, seed: int) -> None:
    config = DocumentConfig(language=language)
    fonts = default_fonts(language)
    corpus = paragraphs(language, 300, random.Random(seed))
    started = time.perf_counter()
    examples = [e for e in synth_pages(corpus, fonts, pages, seed=seed, config=config) if isinstance(e, Example)]
    whole = time.perf_counter() - started

    texts = [t for _, t in corpus]
    started = time.perf_counter()
    layouts = [layout_page(texts, fonts[i % len(fonts)], str(i), random.Random(f"{seed}:{i}"), config) for i in range(pages)]
    layout = time.perf_counter() - started

    started = time.perf_counter()
    for page in layouts:  # the baseline: the same lines drawn flat on white, no texture, no distortion
        image = Image.new("RGB", page.sheet, (255, 255, 255))
        draw = ImageDraw.Draw(image)
        font = pil_font(fonts[0], 20)
        for line in page.lines:
            draw.text(line.at, line.text, font=font, fill=(0, 0, 0))
        image.save(io.BytesIO(), format="JPEG", quality=90)
    baseline = time.perf_counter() - started
    lines = sum(len(e.lines) for e in examples)
    print(f"synthetic {language}: {pages} pages, {lines / pages:.1f} lines a page, {sum(e.width * e.height for e in examples) / pages / 1e6:.2f} MP a page")
    print(f"  make pages (layout, render, JPEG)   {rate(pages, whole)}  ratio to baseline {baseline / whole:.2f}")
    print(f"  layout only (wrap, draw each ink)   {rate(pages, layout)}")
    print(f"  baseline: Pillow text on white, JPEG {rate(pages, baseline)}")


def write_pdf(path: str, pages: int, rng: random.Random) -> None:
    document = pymupdf.open()
    for _ in range(pages):
        page = document.new_page(width=595, height=842)  # A4
        for k in range(40):
            words = " ".join(rng.choice(WORDS) for _ in range(11))
            if k % 13 == 12:
                page.insert_text((520, 800), words[:40], fontsize=9, rotate=90)
            else:
                page.insert_text((40, 40 + 19 * k), words, fontsize=10)
    document.save(path)


def bench_pdf(pages: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "bench.pdf")
        write_pdf(path, pages, random.Random(seed))
        for image_format in ("png", "jpeg"):
            config = PdfConfig(image_format=image_format, max_chars=10_000)
            started = time.perf_counter()
            examples = [e for e in read_pdf(path, config=config) if isinstance(e, Example)]
            seconds = time.perf_counter() - started
            assert len(examples) == pages
            size = sum(len(e.image_bytes) for e in examples) / pages / 1e3
            print(f"  read_pdf, 144 dpi {image_format:4}              {rate(pages, seconds)}  ({size:.0f} KB a page, {sum(len(e.lines) for e in examples) / pages:.0f} lines)")
        started = time.perf_counter()
        with pymupdf.open(path) as document:
            for page in document:
                page.get_text("dict")
        print(f"  baseline: get_text('dict') only      {rate(pages, time.perf_counter() - started)}")


def html_page(rng: random.Random) -> bytes:
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    paragraphs = "".join(f"<p>{words(rng.randint(25, 45)).capitalize()}.</p>" for _ in range(6))
    rows = "".join(f"<tr><td>{words(2)}</td><td>{rng.randint(1, 999)}.{rng.randint(0, 99):02d}</td></tr>" for _ in range(6))
    links = "".join(f'<li><a href="/{i}">{words(3)}</a></li>' for i in range(5))
    return (f'<!doctype html><html><head><title>{words(4)}</title></head><body style="font: 16px sans-serif; max-width: 760px; margin: 24px auto">'
            f'<h1>{words(5).title()}</h1><img src="/banner.png" width="600" height="80">{paragraphs}<table>{rows}</table><ul>{links}</ul></body></html>').encode()


def write_warc(path: str, pages: list[bytes]) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i, body in enumerate(pages):
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"http://bench.example/{i}", "response", payload=io.BytesIO(body), http_headers=headers))


def bench_html(pages: int, seed: int) -> None:
    rng = random.Random(seed)
    bodies = [html_page(rng) for _ in range(pages)]
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "bench.warc.gz")
        write_warc(path, bodies)
        browser()  # started once per thread: not timed
        for image_format in ("png", "jpeg"):
            started = time.perf_counter()
            examples = [e for e in read_html(path, config=HtmlConfig(image_format=image_format, max_chars=10_000)) if isinstance(e, Example)]
            seconds = time.perf_counter() - started
            assert len(examples) == pages
            size = sum(len(e.image_bytes) for e in examples) / pages / 1e3
            lines = sum(len(e.lines) for e in examples) / pages
            pixels = sum(e.width * e.height for e in examples) / pages / 1e6
            print(f"  read_html, {image_format:4}                    {rate(pages, seconds)}  ({size:.0f} KB a page, {lines:.0f} lines, {pixels:.2f} MP)")
    started = time.perf_counter()
    for body in bodies:
        with loaded_page(body, "text/html; charset=utf-8"):
            pass
    print(f"  loading only: fresh context, routes   {rate(pages, time.perf_counter() - started)}")
    page = browser().new_page(viewport={"width": 1280, "height": 720}, java_script_enabled=False)
    started = time.perf_counter()
    for body in bodies:
        page.set_content(body.decode())
        page.screenshot(full_page=True)
    print(f"  baseline: set_content + screenshot   {rate(pages, time.perf_counter() - started)}")
    page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=60, help="synthetic pages per language (default 60)")
    parser.add_argument("--pdf-pages", type=int, default=200, help="PDF pages (default 200)")
    parser.add_argument("--html-pages", type=int, default=100, help="HTML pages (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for language in ("en", "zh"):
        bench_synthetic(language, args.pages, args.seed)
    print(f"PDF: {args.pdf_pages} A4 pages")
    bench_pdf(args.pdf_pages, args.seed)
    print(f"HTML: {args.html_pages} article pages in a WARC")
    bench_html(args.html_pages, args.seed)


if __name__ == "__main__":
    main()
