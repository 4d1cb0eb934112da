"""What a stage-2 converter yields: one annotated example in the data set's pixel coordinates, before
its image is read, its boxes normalized (formats/boxes.py) and its text rendered (formats/templates.py).

Converters (formats/sources/) parse a data set's own files and yield `Example`s, or an `Invalid` for a
record they cannot use (a malformed line, a missing field): one bad record never stops the rest.
"""

from dataclasses import dataclass

# The seven stage-2 tasks (Qwen-VL paper, Table 3), by the names the command line uses.
CAPTION = "caption"  # captioning
VQA = "vqa"  # visual question answering
GROUNDING = "grounding"  # caption with grounding: phrases of the caption tied to boxes
REFERRING = "referring"  # referring grounding: a phrase in, its box(es) out
GROUNDED_CAPTION = "grounded_caption"  # grounded captioning: a box in, its description out
OCR = "ocr"  # OCR with grounding: text lines with their quads (or boxes)
TEXT = "text"  # pure-text autoregression
TASKS = (CAPTION, VQA, GROUNDING, REFERRING, GROUNDED_CAPTION, OCR, TEXT)

Point = tuple[float, float]


@dataclass(frozen=True)
class Region:
    """A place in the image, in the data set's pixels: a box (x1, y1, x2, y2: top-left, bottom-right)
    or a quad (four corner points, clockwise from the top-left one). Exactly one of the two is set."""

    box: tuple[float, float, float, float] | None = None
    quad: tuple[Point, Point, Point, Point] | None = None


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of an example's text that refer to regions (caption with grounding)."""

    start: int
    end: int
    regions: tuple[Region, ...]


@dataclass
class Example:
    """One annotated example. Which fields a task uses:

    caption: text (the caption)
    vqa: question, text (the answer)
    grounding: text (the caption), spans
    referring: text (the referring expression), regions (its boxes: the target)
    grounded_caption: regions (the prompt), text (the description: the target)
    ocr: lines (text and region of each line, in reading order)
    text: text (the document); no image
    """

    task: str
    source: str  # the data set, e.g. "vqav2", "refcoco+"
    key: str  # unique within the source: the stable uid is made from source and key
    lang: str = "en"  # "en" or "zh": picks the prompt's language
    image: str | None = None  # the image file as the data set names it, relative to its image folder
    video: bool = False  # `image` names a video file (caption and vqa; the qwen2-vl dialect)
    image_bytes: bytes | None = None  # the encoded image, when the input carries it (stage-1 curated)
    width: int | None = None  # the image size in pixels, when the annotations give it
    height: int | None = None
    text: str = ""
    question: str = ""
    regions: tuple[Region, ...] = ()
    spans: tuple[Span, ...] = ()
    lines: tuple[tuple[str, Region], ...] = ()


@dataclass(frozen=True)
class Invalid:
    """A record a converter (or a later step) cannot use: counted and written as a reject."""

    source: str
    key: str  # the record's id, or FILE:LINE where it has none
    reason: str  # a short snake_case name, e.g. "malformed_record", "box_outside_image"
    detail: str = ""
