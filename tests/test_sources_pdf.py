"""formats/sources/pdf.py on PDFs written here with PyMuPDF: lines and quads at 144 dpi, page rotation,
and every reject. Expected quads come from Helvetica's metrics: at font size 20 the line's box runs from
the baseline - 21.5 (ascender 1.075) to the baseline + 5.98 (descender 0.299); "Hello world" is 98.9 pt
wide; 144 dpi is 2 px a point."""

import io
import math

import numpy as np
import pymupdf
import pytest
from PIL import Image

from formats.boxes import normalize_example
from formats.example import OCR, Invalid
from formats.sources.pdf import PdfConfig, check_text, read_pdf
from pipelines.stage2 import source_files

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # fonts-dejavu-core (the Makefile installs it)


def write_pdf(path, pages) -> str:
    """A PDF of pages given as (width, height, draw(page) or None)."""
    document = pymupdf.open()
    for width, height, draw in pages:
        page = document.new_page(width=width, height=height)
        if draw:
            draw(page)
    document.save(path)
    return str(path)


def text(*items, **options):
    """A draw function inserting (point, text) items with insert_text(**options)."""
    return lambda page: [page.insert_text(point, words, **{"fontsize": 20, **options}) for point, words in items]


def assert_quad(actual, expected, tolerance=2.0):
    assert len(actual) == 4
    for (x, y), (ex, ey) in zip(actual, expected):
        assert abs(x - ex) <= tolerance and abs(y - ey) <= tolerance, (actual, expected)


def ink_box(image_bytes):
    """(x1, y1, x2, y2) of the dark pixels of a rendered page."""
    pixels = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("L"))
    ys, xs = np.nonzero(pixels < 128)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_lines_and_quads_at_144_dpi(tmp_path):
    path = write_pdf(tmp_path / "a.pdf", [(400, 300, text(((50, 100), "Hello world"), ((50, 200), "Second line here")))])
    [page] = read_pdf(path, source="cc-pdf")
    assert (page.task, page.source, page.key, page.image) == (OCR, "cc-pdf", f"{path}:1", "cc-pdf/a.pdf/1.png")
    assert (page.width, page.height) == (800, 600)
    assert Image.open(io.BytesIO(page.image_bytes)).format == "PNG"
    assert Image.open(io.BytesIO(page.image_bytes)).size == (800, 600)
    assert [t for t, _ in page.lines] == ["Hello world", "Second line here"]
    assert_quad(page.lines[0][1].quad, [(100, 157), (297.8, 157), (297.8, 211.96), (100, 211.96)])
    assert page.lines[1][1].quad[0] == pytest.approx((100, 357), abs=2)
    assert normalize_example(page).lines[0][1].quad == ((125, 261), (372, 261), (372, 353), (125, 353))


def test_rotated_line_gets_a_rotated_quad(tmp_path):
    def draw(page):
        page.insert_text((100, 250), "Upward text", fontsize=20, rotate=90)  # runs bottom to top
        page.insert_text((200, 150), "Tilted text", fontsize=20, morph=(pymupdf.Point(200, 150), pymupdf.Matrix(30)))

    [page] = read_pdf(write_pdf(tmp_path / "r.pdf", [(400, 300, draw)]))
    (up_text, up), (tilt_text, tilt) = page.lines
    width = pymupdf.get_text_length("Upward text", fontsize=20)
    assert up_text == "Upward text"
    # the text's top is to the left: top-left corner bottom-left on screen, then up, clockwise
    assert_quad(up.quad, [(157, 500), (157, 500 - 2 * width), (211.96, 500 - 2 * width), (211.96, 500)])
    # 30 degrees counter-clockwise about the insertion point (200, 150)
    width = pymupdf.get_text_length("Tilted text", fontsize=20)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    flat = [(0, -21.5), (width, -21.5), (width, 5.98), (0, 5.98)]
    expected = [(2 * (200 + dx * c + dy * s), 2 * (150 - dx * s + dy * c)) for dx, dy in flat]
    assert tilt_text == "Tilted text"
    assert_quad(tilt.quad, expected)
    assert not isinstance(normalize_example(page), Invalid)  # clockwise, inside: the OCR task takes it


def test_rotated_page_maps_boxes_to_the_shown_page(tmp_path):
    def draw(page):
        page.insert_text((50, 100), "Hello world", fontsize=20)
        page.set_rotation(90)

    [page] = read_pdf(write_pdf(tmp_path / "p.pdf", [(400, 300, draw)]))
    assert (page.width, page.height) == (600, 800)  # shown 300 x 400 pt, turned a quarter clockwise
    # (x, y) in the unrotated page -> (300 - y, x) on the shown page, times 2
    [(_, region)] = page.lines
    assert_quad(region.quad, [(443, 100), (443, 297.8), (388.04, 297.8), (388.04, 100)])
    x1, y1, x2, y2 = ink_box(page.image_bytes)  # and the ink is there on the rendered page
    assert 388 <= x1 and x2 <= 443 and 100 <= y1 and y2 <= 298


def test_crop_box_and_jpeg(tmp_path):
    def draw(page):
        page.insert_text((50, 100), "Hello world", fontsize=20)
        page.insert_text((50, 20), "cropped off", fontsize=20)
        page.set_cropbox(pymupdf.Rect(20, 50, 380, 290))

    [page] = read_pdf(write_pdf(tmp_path / "c.pdf", [(400, 300, draw)]), config=PdfConfig(image_format="jpeg", min_side_px=100))
    assert page.image == "pdf/c.pdf/1.jpg" and Image.open(io.BytesIO(page.image_bytes)).format == "JPEG"
    assert (page.width, page.height) == (720, 480)
    assert [t for t, _ in page.lines] == ["Hello world"]
    assert_quad(page.lines[0][1].quad, [(60, 57), (257.8, 57), (257.8, 111.96), (60, 111.96)])


def test_page_rejects(tmp_path):
    tiny = (100, 100, text(((10, 50), "Hello there")))
    blank = (400, 300, lambda page: page.draw_rect(pymupdf.Rect(10, 10, 200, 200), color=(0, 0, 0)))
    few = (400, 300, text(((50, 100), "Hi")))
    latin = (400, 300, text(((50, 100), "Zdzisław Łódź ǎ"), fontname="dv", fontfile=DEJAVU))
    pua = (400, 300, text(((50, 100), "icon \uf6c5 here, more"), fontname="dv", fontfile=DEJAVU))
    many = (400, 300, text(*[((20, 30 + 25 * i), "ten chars! " * 3) for i in range(10)]))
    good = (400, 300, text(((50, 100), "Hello world")))
    path = write_pdf(tmp_path / "mixed.pdf", [tiny, blank, few, latin, pua, many, good])
    results = list(read_pdf(path, source="s", config=PdfConfig(max_chars=200)))
    assert results[:6] == [
        Invalid("s", f"{path}:1", "image_too_small", "200x200 px at 144 dpi, shorter side < 448"),
        Invalid("s", f"{path}:2", "page_no_text", "no text line"),
        Invalid("s", f"{path}:3", "page_too_few_chars", "2 characters < 10"),
        Invalid("s", f"{path}:4", "page_latin_extended", "U+0141, U+0142, U+017A and 1 more"),
        Invalid("s", f"{path}:5", "page_private_use", "U+F6C5"),
        Invalid("s", f"{path}:6", "page_too_many_chars", "270 characters > 200"),
    ]
    assert results[6].key == f"{path}:7" and [t for t, _ in results[6].lines] == ["Hello world"]


def test_file_rejects(tmp_path):
    document = pymupdf.open()
    document.new_page().insert_text((50, 100), "secret text here")
    locked = tmp_path / "locked.pdf"
    document.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"\x00\x01 this is not a PDF \xff" * 20)
    assert list(read_pdf(str(locked))) == [Invalid("pdf", str(locked), "pdf_encrypted", "a password is needed to open it")]
    [invalid] = read_pdf(str(broken))
    assert (invalid.key, invalid.reason) == (str(broken), "file_unreadable")
    [invalid] = read_pdf(str(tmp_path / "gone.pdf"))
    assert (invalid.key, invalid.reason) == (str(tmp_path / "gone.pdf"), "file_unreadable")


def test_folder_and_glob_as_stage2_lists_them(tmp_path):
    good = (400, 300, text(((50, 100), "Hello world")))
    for name in ("b.pdf", "a.pdf"):
        write_pdf(tmp_path / name, [good, good])
    (tmp_path / "notes.txt").write_text("not a pdf")
    keys = [e.key for f in source_files(str(tmp_path), "pdf") for e in read_pdf(f)]
    assert keys == [f"{tmp_path}/a.pdf:1", f"{tmp_path}/a.pdf:2", f"{tmp_path}/b.pdf:1", f"{tmp_path}/b.pdf:2"]
    assert [e.key for f in source_files(f"{tmp_path}/b*.pdf", "pdf") for e in read_pdf(f)] == [f"{tmp_path}/b.pdf:1", f"{tmp_path}/b.pdf:2"]
    assert source_files(f"{tmp_path}/none/*.pdf", "pdf") == ()


def test_check_text_rules():
    assert check_text("Hello world, a fine page", 10, 1800) is None
    assert check_text("short", 10, 1800) == ("page_too_few_chars", "5 characters < 10")
    assert check_text("x" * 1801, 10, 1800) == ("page_too_many_chars", "1801 characters > 1800")
    assert check_text("naïve café ĀāȀ ɏ", 10, 1800) == ("page_latin_extended", "U+0100, U+0101, U+0200 and 1 more")
    assert check_text("naïve café, Ünïcödé", 10, 1800) is None  # Latin-1 is not Latin Extended
    assert check_text("plane 15 \U000f0001 glyph", 10, 1800) == ("page_private_use", "U+F0001")
    assert check_text("lost \ufffd\ufffd glyphs here", 10, 1800) == ("page_unmapped_chars", "2 x U+FFFD")
    assert check_text("中文页面的文字足够多了吗", 10, 1800) is None
    assert check_text("naïve café ĀāȀ ɏ", 10, 1800, latin_extended=False) is None


def test_bad_image_format(tmp_path):
    with pytest.raises(ValueError, match="image_format must be one of png, jpeg, not 'gif'"):
        list(read_pdf(str(tmp_path / "x.pdf"), config=PdfConfig(image_format="gif")))
