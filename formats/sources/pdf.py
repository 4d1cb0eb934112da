"""OCR pages from PDF files: per page, its text lines with their quads and the page rendered to an image.

The Qwen-VL paper (§3.2 and its appendix on stage-2 data) makes OCR data from Common Crawl PDFs with
PyMuPDF: the text and its boxes per page, the page rendered, then too-small images, pages with too many
or too few characters and pages holding Latin Extended-A/B or Private Use Area characters dropped. Here:

- lines: MuPDF's text lines (`page.get_text("dict")`: blocks, lines, spans), in MuPDF's reading order,
  the text of a line's spans joined; blank lines are left out. A line's quad is its font box (ascender
  to descender) along its writing direction (`dir`), from `pymupdf.recover_line_quad`: a rotated line
  gets a rotated quad. Characters PyMuPDF cannot map to Unicode come as U+FFFD.
- the image: the page as a viewer shows it (its /Rotate applied, its crop box) at `dpi`. PyMuPDF gives
  text in unrotated page space (points from the crop box's top-left); `page.rotation_matrix` takes a
  point to the shown page, and dpi / 72 to pixels. Quads are clockwise from the text's top-left corner,
  as formats/sources/ocr.py reads them; each record is the formats.example.Example that reader makes.

Rejects, one per file: `file_unreadable` (no file, or not a PDF MuPDF can open with a page in it), `pdf_encrypted` (a
user password is needed; a PDF with only an owner password opens and is read). Per page, cheapest
first: `page_unreadable` (MuPDF fails on it), `image_too_small` (the rendered page's shorter side below
`min_side_px`, known before rendering), `page_no_text` (no text layer: a scan, or only drawings),
`page_too_few_chars` / `page_too_many_chars` (non-space characters), `page_latin_extended`,
`page_private_use`, `page_unmapped_chars` (U+FFFD: a glyph without Unicode, so the text is not what
the image shows).

PyMuPDF is AGPL-3.0 (or Artifex's commercial licence); this module is the only one importing it.
"""

import dataclasses
import posixpath
import re
from collections.abc import Iterator

import pymupdf

from formats.example import OCR, Example, Invalid, Region
from formats.files import open_file
from formats.reasons import (
    FILE_UNREADABLE,
    IMAGE_TOO_SMALL,
    PAGE_LATIN_EXTENDED,
    PAGE_NO_TEXT,
    PAGE_PRIVATE_USE,
    PAGE_TOO_FEW_CHARS,
    PAGE_TOO_MANY_CHARS,
    PAGE_UNMAPPED_CHARS,
    PAGE_UNREADABLE,
    PDF_ENCRYPTED,
)
from formats.sources.records import error_text, file_name


@dataclasses.dataclass(frozen=True)
class PdfConfig:
    """How pages are rendered and which are kept. The paper publishes no values: these are ours."""

    dpi: int = 144  # render resolution: 2 px per PDF point, an A4 page is 1191 x 1684 px
    image_format: str = "png"  # "png" (lossless, sharp text) or "jpeg"
    jpeg_quality: int = 90
    min_side_px: int = 448  # the shorter side of the rendered page: stage 2 trains at 448 px
    min_chars: int = 10  # non-space characters of the page's lines
    # At about 60 characters a line, a line costs ~15 text tokens + ~40 for its <ref>/<quad> markup, and
    # the image 258: 1,800 characters (30 lines) is about what one 2048-token sequence holds.
    max_chars: int = 1800


IMAGE_FORMATS = {"png": "png", "jpeg": "jpg"}  # image_format -> the extension written in the image name
_LATIN_EXTENDED = re.compile("[\u0100-\u024f]")
_PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_UNMAPPED = "\ufffd"
# Ligatures kept as one character, spaces as written, text outside the media box dropped; not
# TEXT_CID_FOR_UNKNOWN_UNICODE, which would write a glyph's raw code instead of U+FFFD.
_TEXT_FLAGS = pymupdf.TEXT_PRESERVE_LIGATURES | pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP


def _shown(chars: list[str]) -> str:
    first = ", ".join(f"U+{ord(ch):04X}" for ch in chars[:3])
    return first + (f" and {len(chars) - 3} more" if len(chars) > 3 else "")


def check_text(text: str, min_chars: int, max_chars: int, latin_extended: bool = True) -> tuple[str, str] | None:
    """(reason, detail) when a page's text fails a character rule, else None (rules in the module docstring;
    `latin_extended=False` leaves out the Latin Extended rule, as formats/sources/html_pages.py does)."""
    chars = sum(not ch.isspace() for ch in text)
    if chars < min_chars:
        return PAGE_TOO_FEW_CHARS, f"{chars} characters < {min_chars}"
    if chars > max_chars:
        return PAGE_TOO_MANY_CHARS, f"{chars} characters > {max_chars}"
    rules = ((PAGE_LATIN_EXTENDED, _LATIN_EXTENDED),) if latin_extended else ()
    for reason, pattern in rules + ((PAGE_PRIVATE_USE, _PRIVATE_USE),):
        found = sorted(set(pattern.findall(text)))
        if found:
            return reason, _shown(found)
    if _UNMAPPED in text:
        return PAGE_UNMAPPED_CHARS, f"{text.count(_UNMAPPED)} x U+FFFD"
    return None


def text_lines(page: pymupdf.Page) -> list[tuple[str, pymupdf.Quad]]:
    """(text, quad in unrotated page points) of each non-blank text line of a page, in MuPDF's order."""
    lines = []
    clip = pymupdf.Rect(0, 0, page.cropbox.width, page.cropbox.height)  # what the shown page holds
    for block in page.get_text("dict", flags=_TEXT_FLAGS, clip=clip)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"]).strip()
            if text:
                lines.append((text, pymupdf.recover_line_quad(line)))
    return lines


def page_example(page: pymupdf.Page, source: str, key: str, image: str, config: PdfConfig = PdfConfig()) -> Example | Invalid:
    """One page as an OCR Example (image bytes, size, lines with pixel quads) or an Invalid with its reason."""
    try:
        scale = pymupdf.Matrix(config.dpi / 72, config.dpi / 72)
        to_pixels = page.rotation_matrix * scale
        shown = page.rect * scale
        if min(shown.width, shown.height) < config.min_side_px:
            return Invalid(source, key, IMAGE_TOO_SMALL, f"{shown.width:.0f}x{shown.height:.0f} px at {config.dpi} dpi, shorter side < {config.min_side_px}")
        lines = text_lines(page)
        if not lines:
            return Invalid(source, key, PAGE_NO_TEXT, "no text line")
        failed = check_text("\n".join(text for text, _ in lines), config.min_chars, config.max_chars)
        if failed:
            return Invalid(source, key, *failed)
        pixmap = page.get_pixmap(matrix=scale, alpha=False)
        data = pixmap.tobytes(IMAGE_FORMATS[config.image_format], jpg_quality=config.jpeg_quality)
    except Exception as e:  # MuPDF raises on a broken page (content stream, fonts)
        return Invalid(source, key, PAGE_UNREADABLE, error_text(e))
    regions = []
    for text, quad in lines:
        q = quad * to_pixels
        corners = (q.ul, q.ur, q.lr, q.ll)  # clockwise from the text's top-left corner
        regions.append((text, Region(quad=tuple((round(p.x, 2), round(p.y, 2)) for p in corners))))
    return Example(OCR, source, key, image=image, image_bytes=data, width=pixmap.width, height=pixmap.height, lines=tuple(regions))


def read_pdf(path: str, source: str = "pdf", config: PdfConfig = PdfConfig()) -> Iterator[Example | Invalid]:
    """The pages of one PDF file (local or remote), each an Example or an Invalid; keys are PATH:PAGE
    (pages from 1), images named SOURCE/FILE/PAGE.png (or .jpg)."""
    if config.image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {config.image_format!r}")
    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's own messages: each failure becomes a reject's detail
    try:
        with open_file(path, compression=None) as f:
            data = f.read()
        document = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:  # missing file, or bytes MuPDF cannot take for a PDF
        yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
        return
    with document:
        if document.needs_pass:
            yield Invalid(source, path, PDF_ENCRYPTED, "a password is needed to open it")
            return
        if document.page_count == 0:  # MuPDF repairs what it can: bytes with no page left are not a PDF
            yield Invalid(source, path, FILE_UNREADABLE, "no page")
            return
        name = file_name(path)
        for number in range(1, document.page_count + 1):
            key, image = f"{path}:{number}", posixpath.join(source, name, f"{number}.{IMAGE_FORMATS[config.image_format]}")
            try:
                page = document.load_page(number - 1)
            except Exception as e:
                yield Invalid(source, key, PAGE_UNREADABLE, error_text(e))
                continue
            yield page_example(page, source, key, image, config)

