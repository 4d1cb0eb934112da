"""Synthetic OCR pages in the manner of SynthDoG (Kim et al., "OCR-free Document Understanding
Transformer", ECCV 2022, §3.2), with what the public SynthDoG release does not write and Qwen-VL trained
on (Qwen-VL paper, §3.2 and Table 3: SynthDoG-en and -zh with quadrilateral line locations): each text
line's quad.

A page: a sheet of paper (a light colour with procedural blotches and grain), the corpus's paragraphs
from a random one on, wrapped to one or two columns (synthetic/wrap.py: Latin on spaces, Chinese per
character), in one font at one size, dark ink, line spacing 1.15-1.8, left or centred; then the sheet
rotated and put in perspective on a desk (synthetic/distort.py: one homography for the image and every
quad), shaded, blurred, noised, and encoded as JPEG at a random quality.

Each line's ink is drawn on its own first, so its ink box on the flat sheet is known to the pixel; its
quad is that box grown by `pad` px (2 + 3 blur sigmas: what bilinear warping and the blur spread) and
mapped through the homography, clockwise from the text's top-left corner. Lines are spaced so that the
grown boxes never meet, so a quad holds its own line's ink and no other's (tests/test_synthetic_documents.py
checks it on rendered pixels, a page rendered once per line with only that line inked).

Pages are independent: page i of a seed draws everything from its own generator, so any subset can be
made apart (on any worker) and the same seed gives the same bytes. A page holds at most `max_lines`
lines so that its OCR sample fits a 2048-token sequence (per line ~40 tokens of <ref>/<quad> markup
plus its text; the image 258).
"""

import io
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from formats.example import OCR, Example, Invalid, Region
from formats.reasons import GLYPH_MISSING
from synthetic.distort import apply, blur, random_homography, sensor_noise, shading, warp
from synthetic.fonts import Font, pil_font
from synthetic.wrap import wrap

LANGUAGES = ("en", "zh")
PAPERS = ((252, 252, 250), (246, 241, 226), (238, 238, 232), (250, 246, 235), (236, 242, 248), (244, 236, 222))
INKS = ((20, 20, 20), (35, 35, 45), (20, 35, 95), (95, 20, 20), (30, 60, 30), (55, 45, 40))
DESKS = ((120, 100, 80), (70, 70, 75), (160, 150, 135), (40, 45, 55), (190, 190, 185))


@dataclass(frozen=True)
class DocumentConfig:
    """What the pages vary over; each page draws its own values from these ranges."""

    language: str = "en"  # en or zh: the Example's lang (the prompt's language)
    min_page_px: int = 600  # the flat sheet's width and height, each in [min, max]
    max_page_px: int = 1100
    min_font_px: int = 14
    max_font_px: int = 36
    max_lines: int = 20  # see the module docstring: one page's sample within 2048 tokens
    max_rotation_deg: float = 8.0
    max_perspective: float = 0.04  # a corner moves up to this share of the sheet's shorter side
    max_shading: float = 0.3  # the light falls off by up to 30% across the page
    max_blur_px: float = 1.0  # Gaussian sigma; a third of the pages are sharp
    max_noise: float = 5.0  # Gaussian sensor noise, in levels of 255
    min_jpeg_quality: int = 60
    max_jpeg_quality: int = 95


@dataclass(eq=False)
class Line:
    """A line of a page: its text, its ink (an L image, cropped to the ink) and where it goes on the flat
    sheet (`at`: the ink's top-left pixel), in `colour`."""

    text: str
    ink: Image.Image
    at: tuple[int, int]
    colour: tuple[int, int, int]


@dataclass(eq=False)
class Page:
    """A page's layout and every random value its rendering needs: rendering it again gives the same pixels."""

    key: str
    sheet: tuple[int, int]  # the flat sheet's (width, height)
    paper: tuple[int, int, int]
    desk: tuple[int, int, int]
    lines: list[Line]
    matrix: np.ndarray  # flat sheet -> image
    size: tuple[int, int]  # the image's (width, height)
    pad: float  # px added around each line's ink box before mapping it
    shading: float  # how much the light falls off across the page
    shading_angle: float  # the direction it falls off to, in radians
    blur_px: float
    noise: float
    jpeg_quality: int
    noise_seed: int

    def quad(self, line: Line) -> tuple[tuple[float, float], ...]:
        """The line's quad in the image: its ink box grown by `pad`, mapped, clockwise from top-left."""
        x, y = line.at
        x0, y0, x1, y1 = x - self.pad, y - self.pad, x + line.ink.width + self.pad, y + line.ink.height + self.pad
        return tuple((round(u, 2), round(v, 2)) for u, v in apply(self.matrix, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))


def _jitter(colour: tuple[int, int, int], rng: random.Random, spread: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-spread, spread))) for c in colour)


def ink_of(text: str, font) -> tuple[Image.Image, tuple[int, int]]:
    """The text drawn in white on black, cropped to its ink, and the crop's top-left relative to the
    text's origin (the left end of its baseline); None for the image when nothing is inked."""
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, font=font, fill=255, anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None, (0, 0)
    return canvas.crop(box), (box[0] + left - 2, box[1] + top - 2)


def layout_page(texts: list[str], font: Font, key: str, rng: random.Random, config: DocumentConfig) -> Page:
    """A page's layout from the paragraphs `texts` (all drawable in `font`), starting at a random one."""
    width, height = rng.randint(config.min_page_px, config.max_page_px), rng.randint(config.min_page_px, config.max_page_px)
    font_px = rng.randint(config.min_font_px, min(config.max_font_px, width // 20))
    blur_px = rng.choice((0.0, rng.uniform(0.3, config.max_blur_px), rng.uniform(0.3, config.max_blur_px)))
    pad = 2.0 + 3.0 * blur_px
    pitch = round(font_px * rng.uniform(1.15, 1.8))
    margin_x, margin_y = rng.randint(width // 25, width // 10), rng.randint(height // 25, height // 10)
    columns = 2 if width >= 800 and rng.random() < 0.3 else 1
    gap = max(font_px, round(2 * pad) + 8)
    column_px = (width - 2 * margin_x - gap * (columns - 1)) // columns
    centred = rng.random() < 0.2
    paragraph_gap = round(pitch * rng.choice((0.0, 0.5, 1.0)))
    ink = _jitter(rng.choice(INKS), rng, 12)
    pil = pil_font(font, font_px)
    ascent = pil.getmetrics()[0]
    advances: dict[str, float] = {}

    def measure(text: str) -> float:
        """A line's width as the sum of its characters' advances, each measured once: what Pillow's basic
        layout places them by, less kerning (so never narrower); the ink box is measured when drawn."""
        for ch in text:
            if ch not in advances:
                advances[ch] = pil.getlength(ch)
        return sum(advances[ch] for ch in text)

    lines: list[Line] = []
    column, baseline, bottom = 0, margin_y + ascent, None  # bottom: the last line's ink bottom in this column
    start = rng.randrange(len(texts))
    for paragraph in texts[start:] + texts[:start]:
        for k, text in enumerate(wrap(paragraph, measure, column_px)):
            image, (dx, dy) = ink_of(text, pil)
            if image is None:
                continue
            if bottom is not None:  # below the last line: a pitch on, and the grown boxes apart
                baseline = max(baseline + pitch + (paragraph_gap if k == 0 else 0), bottom + round(2 * pad) + 2 - dy)
            if baseline + dy + image.height > height - margin_y:
                column += 1
                if column == columns:
                    break
                baseline, bottom = margin_y + ascent, None
            left = margin_x + column * (column_px + gap)
            x = left + (column_px - (dx + image.width)) // 2 if centred else left
            colour = ink if rng.random() > 0.1 else _jitter(rng.choice(INKS), rng, 12)
            lines.append(Line(text, image, (x + dx, baseline + dy), colour))
            bottom = baseline + dy + image.height
            if len(lines) == config.max_lines:
                break
        if column == columns or len(lines) == config.max_lines:
            break

    margin = rng.randint(8, 40)
    matrix, size = random_homography(width, height, rng, config.max_rotation_deg, config.max_perspective, margin)
    return Page(
        key=key, sheet=(width, height), paper=_jitter(rng.choice(PAPERS), rng, 4),
        desk=_jitter(rng.choice(DESKS), rng, 20), lines=lines, matrix=matrix, size=size, pad=pad,
        shading=rng.uniform(0, config.max_shading), shading_angle=rng.uniform(0, 2 * math.pi), blur_px=blur_px, noise=rng.uniform(0, config.max_noise),
        jpeg_quality=rng.randint(config.min_jpeg_quality, config.max_jpeg_quality), noise_seed=rng.getrandbits(64),
    )


def texture(width: int, height: int, colour: tuple[int, int, int], blotch: float, grain: float, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) float surface: `colour` with low-frequency blotches (a 48 px random grid,
    bicubic-upsampled, of `blotch` levels) and per-pixel grain (`grain` levels)."""
    grid = rng.standard_normal((height // 48 + 2, width // 48 + 2), dtype=np.float32) * blotch
    field = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))
    field = field + rng.standard_normal((height, width), dtype=np.float32) * grain
    return np.clip(np.asarray(colour, np.float32) + field[..., None], 0, 255)


def render_page(page: Page, inked: set[int] | None = None) -> np.ndarray:
    """The page's pixels (height, width, 3) before JPEG encoding, with the lines whose indices are in
    `inked` drawn (all by default): everything else (paper, warp, light, blur, noise) is the same for
    any `inked`, so rendering with one line inked shows where that line's ink lands."""
    rng = np.random.default_rng(page.noise_seed)
    width, height = page.sheet
    sheet = texture(width, height, page.paper, 4.0, 2.0, rng)
    for i, line in enumerate(page.lines):
        if inked is not None and i not in inked:
            continue
        x, y = line.at
        alpha = np.asarray(line.ink, np.float32)[..., None] / 255.0
        area = sheet[y : y + line.ink.height, x : x + line.ink.width]
        area *= 1.0 - alpha
        area += alpha * np.asarray(line.colour, np.float32)
    flat = Image.fromarray(np.rint(sheet).astype(np.uint8))
    desk = Image.fromarray(np.rint(texture(*page.size, page.desk, 10.0, 3.0, rng)).astype(np.uint8))
    mask = warp(Image.new("L", flat.size, 255), page.matrix, page.size)
    image = Image.composite(warp(flat, page.matrix, page.size), desk, mask)
    lit = np.asarray(image, np.float32) * shading(*page.size, page.shading_angle, page.shading)[..., None]
    image = blur(Image.fromarray(np.clip(np.rint(lit), 0, 255).astype(np.uint8)), page.blur_px)
    return sensor_noise(np.asarray(image, np.float32), page.noise, rng)


def page_example(page: Page, source: str, lang: str) -> Example:
    """The rendered page as an OCR Example, as formats/sources/ocr.py reads one: image bytes (JPEG), size,
    each line's text and quad in pixels."""
    buffer = io.BytesIO()
    Image.fromarray(render_page(page)).save(buffer, format="JPEG", quality=page.jpeg_quality)
    lines = tuple((line.text, Region(quad=page.quad(line))) for line in page.lines)
    return Example(OCR, source, page.key, lang=lang, image=f"images/{page.key}.jpg", image_bytes=buffer.getvalue(),
                   width=page.size[0], height=page.size[1], lines=lines)


def drawable(paragraphs: list[tuple[str, str]], fonts: list[Font], source: str) -> tuple[list[list[str]], list[Invalid]]:
    """For each font, the paragraphs it can draw whole; and a `glyph_missing` Invalid for each (key,
    paragraph) no font can, naming the characters the closest font lacks."""
    per_font: list[list[str]] = [[] for _ in fonts]
    rejects = []
    for key, text in paragraphs:
        missing = [font.missing(text) for font in fonts]
        for texts, lacking in zip(per_font, missing):
            if not lacking:
                texts.append(text)
        if all(missing):
            best = min(range(len(fonts)), key=lambda i: len(missing[i]))
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[best][:3])
            more = f" and {len(missing[best]) - 3} more" if len(missing[best]) > 3 else ""
            rejects.append(Invalid(source, key, GLYPH_MISSING, f"{fonts[best].name} lacks {shown}{more}"))
    return per_font, rejects


def synth_pages(paragraphs: list[tuple[str, str]], fonts: list[Font], count: int, seed: int = 0,
                config: DocumentConfig = DocumentConfig(), source: str | None = None) -> Iterator[Example | Invalid]:
    """`count` synthetic OCR pages (keys SEED-NNNNNN) from (key, paragraph) pairs (synthetic/corpus.py),
    after a `glyph_missing` Invalid for each paragraph none of the fonts can draw. Each page is drawn in
    one font, from the paragraphs it can draw. A ValueError, before any page, if the language is not
    en or zh or no paragraph can be drawn at all."""
    if config.language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {config.language!r}")
    source = source or f"synthdog-{config.language}"
    per_font, rejects = drawable(paragraphs, fonts, source)
    usable = [(font, texts) for font, texts in zip(fonts, per_font) if texts]
    if not usable:
        raise ValueError(f"none of the {len(paragraphs)} paragraphs can be drawn with the {len(fonts)} fonts given")
    return itertools.chain(rejects, (page_example(page, source, config.language) for page in _layouts(usable, count, seed, config)))


def _layouts(usable: list[tuple[Font, list[str]]], count: int, seed: int, config: DocumentConfig) -> Iterator[Page]:
    for index in range(count):
        rng = random.Random(f"synthdog:{seed}:{index}")
        font, texts = rng.choice(usable)
        yield layout_page(texts, font, f"{seed}-{index:06d}", rng, config)
